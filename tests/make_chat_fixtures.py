#!/usr/bin/env python3
"""tests/make_chat_fixtures.py: renders chat templates with jinja2 as Hugging Face's apply_chat_template does
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, raise_exception), for several conversations,
into tests/fixtures/chat_templates.json, which tests/test_instruct.c compares jinja.c's renders with byte
for byte. Test-only (Debian: apt-get install python3-jinja2). Run from the repository root."""
import json
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The templates as their tokenizer_config.json files ship them (Llama-3-Instruct, Mistral-7B-Instruct-v0.1,
# Qwen1.5/ChatML, Gemma-it), and a few written for the subset's corners (whitespace control, comments,
# scoping, numbers, filters and tests).
TEMPLATES = {
    "llama3": ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
               "<|begin_of_text|>", "<|eot_id|>"),
    "mistral": ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
                "<s>", "</s>"),
    "chatml": ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
               "", "<|im_end|>"),
    "gemma": ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
              "<bos>", "<eos>"),
    # multi-line with indentation: trim_blocks and lstrip_blocks at work, {%- -%}, {{- -}}, {%+, comments
    "layout": "{# a comment at the start #}\n{%- if messages[0].role == 'system' %}\n    {%- set sys = messages[0].content %}\n{%- else %}\n    {%- set sys = 'default system' %}\n{%- endif %}\n<<{{ sys }}>>\n{% for m in messages %}\n    {% if m.role == 'system' %}\n        {# skipped #}\n    {% elif m.role == 'user' %}\n  U{{ loop.index }}/{{ loop.length }}: {{ m.content }}\n    {%+ if loop.last %}(last){% endif %}\n\n    {% else %}\n  A: {{- ' ' ~ m.content -}}  \n   !\n    {% endif %}\n{% endfor %}\n{%- if add_generation_prompt -%}\n   GEN\n{%- endif %}\n",
    # scoping: a set inside the loop does not leak out; numbers, comparisons, filters, tests
    "scope": "{% set x = 'outer' %}{% for m in messages %}{% set x = m.role %}[{{ x }}:{{ loop.index0 * 2 + 1 }}:{{ loop.revindex }}:{{ loop.first }}]{% endfor %}{{ x }}|{{ messages | length }}|{{ (messages[-1]['content'] | trim) | length }}|{{ undefined_name is defined }}{{ bos_token is defined }}{{ not add_generation_prompt }}|{{ -7 % 3 }}{{ 7 % -3 }}|{{ 3 > 2 and 'a' < 'b' }}|{{ '' or 'fallback' }}|{{ none }}{{ messages[9] is defined }}|{{ 'x' ~ 5 ~ true }}|{{ messages[0].missing is undefined }}{{ add_generation_prompt is not none }}{{ bos_token is string }}|{{ 'tab\\there' }}{{ \"dq'\\\"\" }}{{ '\\u00e9\\x41' }}",
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "  What is 2+2?\n"}, {"role": "assistant", "content": "4 "}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \u00e9\u4e16"}, {"role": "assistant", "content": "Hello."}],
    [{"role": "assistant", "content": "I start."}],
    [{"role": "user", "content": "a\n\nb\t"}, {"role": "user", "content": "twice"}],
]


def render(src, bos, eos, messages, gen):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    try:
        return {"output": env.from_string(src).render(messages=messages, bos_token=bos, eos_token=eos,
                                                      add_generation_prompt=gen)}
    except TemplateError as e:
        return {"error": str(e)}


def main():
    out = []
    for name, t in TEMPLATES.items():
        src, bos, eos = t if isinstance(t, tuple) else (t, "<s>", "</s>")
        cases = []
        for conv in CONVERSATIONS:
            for gen in (False, True):
                r = render(src, bos, eos, conv, gen)
                cases.append({"messages": conv, "add_generation_prompt": gen, **r})
        out.append({"name": name, "template": src, "bos_token": bos, "eos_token": eos, "cases": cases})
    with open("tests/fixtures/chat_templates.json", "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
