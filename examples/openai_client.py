"""Talk to rocket-serve with the official openai client.

rocket-serve /models/Llama-3.1-8B-Instruct --config configs/rocket.yaml &
python examples/openai_client.py          # asks the server for its model id (or give --model ID)
"""

import argparse

import openai


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="none")
    p.add_argument("--model", help="the served model id (default: the first of GET /v1/models)")
    args = p.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    args.model = args.model or client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": "Name three prime numbers."}], max_tokens=64
    )
    print(reply.choices[0].message.content)
    for chunk in client.completions.create(model=args.model, prompt="Once upon a time", max_tokens=64, stream=True):
        print(chunk.choices[0].text, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
