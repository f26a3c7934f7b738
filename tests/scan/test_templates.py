# ruff: noqa: E501  (templates are kept as their authors write them, long lines included)
"""Chat template checks (src/trainguard/scan/analyzers/templates.py): parsed, never rendered.

Benign templates are the chat templates popular model families publish (Llama 3 / 3.1, Mistral,
ChatML / Qwen 2.5, Gemma) plus one exercising the Jinja features real templates rely on; they must
give no finding. Hostile templates reproduce server-side template injection payloads; each must
be TG-TPL-001. Every case goes through ``scan_paths`` in a ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fixtures.chat_templates import CVE_2024_34359, LLAMA3
from fixtures.scanning import scan
from trainguard.core.findings import Severity
from trainguard.scan.analyzers.templates import MAX_TEMPLATE_CHARS, inspect_template
from trainguard.scan.engine import scan_paths

LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary}.' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's none!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
            {%- endfor %}
            {{- ")" }}
        {%- else %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools>:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Features real templates use: macros, namespace(), {% break %}, {% generation %} (transformers'
# assistant-mask tag), strftime_now, dict/str methods on render-time values, slicing, filters
# with attribute names, loop helpers, dictsort, selectattr, tojson.
FEATURES = """{%- set today = strftime_now("%Y-%m-%d") %}
{%- macro render_tool(tool, indent=2) -%}
    {{- tool.function.name }}: {{ tool.function.parameters | tojson(indent=indent) }}
{%- endmacro -%}
{%- set ns = namespace(last_user=-1, found=false, text='') -%}
{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{%- set user_messages = messages | selectattr("role", "equalto", "user") | list %}
{%- set names = tools | default([]) | map(attribute='function.name') | join(', ') %}
{%- for key, value in (extra or {}) | dictsort %}{{ key }}={{ value }}{% endfor %}
{%- for m in messages %}
    {%- if m.get('tool_calls') %}
        {%- for call in m.tool_calls %}{{ render_tool(call) }}{% if loop.index > 8 %}{% break %}{% endif %}{% endfor %}
    {%- endif %}
    {%- set content = m.content if m.content is string else m.content[0]['text'] %}
    {%- if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}
    {%- set content = content.replace('/no_think', '') | trim %}
    {%- if m.role == 'assistant' %}{% generation %}{{ content[:4096] }}{% endgeneration %}
    {%- else %}{{ '[' ~ m.role | upper ~ '] ' ~ content ~ '\\n' }}{% endif %}
    {%- if m.tool_call_id is defined and m.tool_call_id | length < 9 %}{{ raise_exception("bad id " ~ m.tool_call_id[-9:]) }}{% endif %}
{%- endfor %}
{{- 'Date: %s' | format(today) }}{{ "{} tools".format(names | length) }}
{%- if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}
"""

BENIGN = {"llama3": LLAMA3, "llama3.1": LLAMA31, "mistral": MISTRAL, "qwen2.5": QWEN25,
          "gemma": GEMMA, "features": FEATURES}

HOSTILE = {
    "cve-2024-34359": CVE_2024_34359,
    "subclasses walk": "{{ ().__class__.__base__.__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os.popen('true').read() }}",
    "joiner globals": "{{ joiner.__init__.__globals__.os.system('true') }}",
    "namespace globals": "{{ namespace.__init__.__globals__['os'].system('true') }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].popen('true').read() }}",
    "self context": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    "range attribute": "{{ range.__self__ }}",
    "attr filter": "{{ ()|attr('__class__') }}",
    "attr filter, concatenated": "{{ ()|attr('__cla' ~ 'ss__')|attr('__base__') }}",
    "attr filter, plus": "{{ ()|attr('__cla' + 'ss__') }}",
    "attr filter, hex escapes": "{{ ()|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "attr filter, unicode escapes": "{{ ()|attr('\\u005f\\u005fclass\\u005f\\u005f') }}",
    "attr filter, reversed": "{{ ()|attr('__ssalc__'|reverse) }}",
    "attr filter, lower": "{{ ()|attr('__CLASS__'|lower) }}",
    "attr filter, joined list": "{{ ()|attr(['__', 'class', '__']|join) }}",
    "attr filter, repeated underscore": "{% set u = '_' * 2 %}{{ ()|attr(u ~ 'class' ~ u) }}",
    "attr filter, printf chars": "{% set u = '%c%c' % (95, 95) %}{{ ()|attr(u ~ 'class' ~ u) }}",
    "attr filter, format filter": "{{ ()|attr('%sclass%s'|format('__', '__')) }}",
    "attr filter, replace": "{{ ()|attr('_x_class_x_'|replace('x', '_')) }}",
    "attr filter, slice": "{{ ()|attr('x__class__x'[1:-1]) }}",
    "attr filter, set block pieces": "{% set a = '__cla' %}{% set b = 'ss__' %}{{ ()|attr(a ~ b) }}",
    "attr filter, name from messages": "{{ ()|attr(messages[0].content) }}",
    "subscript dunder": "{{ ()['__class__'] }}",
    "subscript built at render time": "{{ ()[messages[0].content ~ 'class'] }}",
    "map attribute": "{{ messages|map(attribute='__class__')|list }}",
    "map attr filter": "{{ messages|map('attr', '__class__')|list }}",
    "selectattr dunder": "{{ messages|selectattr('__class__')|list }}",
    "format string fields": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "format on render-time string": "{{ messages[0].content.format(messages) }}",
    "mro attribute": "{{ ''.__class__.mro() }}",
    "os name": "{{ os.popen('true') }}",
    "dunder import name": "{{ __import__('os') }}",
    "config object": "{{ config.items() }}",
    "generation block": "{% generation %}{{ ().__class__ }}{% endgeneration %}",
    "namespace set dunder": "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "loop pieces": "{% for p in ['__cla', 'ss__'] %}{{ p }}{% endfor %}",
    "include": "{% include '/etc/passwd' %}",
}


def _scan_template(tmp_path: Path, template: str | list[dict[str, str]]) -> list[tuple[str, str]]:
    d = tmp_path / "tok"
    d.mkdir(exist_ok=True)
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}))
    report = scan(d / "tokenizer_config.json", bounded_seconds=10)
    assert report.files[0].formats == ["json"]
    return [(f.rule_id, f.severity.label) for f in report.findings]


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_real_templates_are_clean(tmp_path: Path, name: str) -> None:
    assert inspect_template(BENIGN[name]) == []
    assert _scan_template(tmp_path, BENIGN[name]) == []


def test_named_template_list_is_clean(tmp_path: Path) -> None:
    templates = [{"name": "default", "template": QWEN25}, {"name": "tool_use", "template": LLAMA31}]
    assert _scan_template(tmp_path, templates) == []


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_injection_is_tpl_001(tmp_path: Path, name: str) -> None:
    findings = _scan_template(tmp_path, HOSTILE[name])
    assert [rule for rule, _ in findings] == ["TG-TPL-001"], findings


def test_cve_2024_34359_is_critical_and_names_the_gadgets(tmp_path: Path) -> None:
    """CVE-2024-34359 (llama-cpp-python SSTI via GGUF chat template metadata)."""
    issues = inspect_template(CVE_2024_34359)
    assert max(i.severity for i in issues) is Severity.CRITICAL
    text = " ".join(i.text() for i in issues)
    for gadget in ("__class__", "__base__", "__subclasses__", "__builtins__", "__import__",
                   "_module"):
        assert gadget in text


def test_hostile_entry_in_a_named_template_list(tmp_path: Path) -> None:
    templates = [{"name": "default", "template": GEMMA},
                 {"name": "rag", "template": HOSTILE["lipsum globals"]}]
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
    report = scan_paths([str(d)])
    assert [f.rule_id for f in report.findings] == ["TG-TPL-001"]
    assert "chat_template['rag']" in report.findings[0].evidence


def test_syntax_error_is_tpl_002(tmp_path: Path) -> None:
    assert _scan_template(tmp_path, "{% for m in messages %}{{ m.content }}") == [
        ("TG-TPL-002", "medium")]


def test_unparsable_template_with_dunders_is_also_tpl_001(tmp_path: Path) -> None:
    """Another loader's Jinja dialect may accept what ours does not: dunders still count."""
    rules = {rule for rule, _ in _scan_template(
        tmp_path, "{% weird %}{{ ().__class__.__subclasses__() }}")}
    assert rules == {"TG-TPL-001", "TG-TPL-002"}


def test_printed_text_mentioning_a_dunder_is_not_a_finding() -> None:
    """Template text and printed constants are output, not attribute lookups."""
    assert inspect_template("Use __init__ to set up. {{ '__NOTE__' }} {{ x }}") == []


@pytest.mark.parametrize("template", [
    "{{ 'a' * 1000000000 }}",
    "{{ ('%999s' * 60000) % (1,) }}",
    "{{ ('x'|replace('', 'y' * 60000)) }}",
    "{% set a = 'ab' * 30000 %}" + "{% set a = a ~ a %}" * 40 + "{{ a }}",
    "{{ " + "(" * 400 + "1" + ")" * 400 + " }}",
    "{{ '{:>999999999}'.format(1) }}",
])
def test_static_evaluation_is_bounded(template: str) -> None:
    start = time.perf_counter()
    inspect_template(template)
    assert time.perf_counter() - start < 5


def test_deeply_nested_template_is_a_finding_not_a_crash() -> None:
    issues = inspect_template("{{ " + "(" * 100_000 + "1" + ")" * 100_000 + " }}")
    assert [i.rule_id for i in issues] == ["TG-TPL-002"]


def test_oversized_template_is_not_analyzed() -> None:
    issues = inspect_template("x" * (MAX_TEMPLATE_CHARS + 1))
    assert [i.rule_id for i in issues] == ["TG-LIM-001"]
