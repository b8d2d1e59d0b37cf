#include <gtest/gtest.h>

#include "common/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja/template.h"

namespace hs {

namespace {

std::string render(const std::string& source, jinja::Dict vars = {}, jinja::RenderLimits limits = {}) {
  return jinja::Template(source).render(vars, limits);
}

// The message of the error `f` throws; empty when it throws none.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const char* const kChatML =
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

}  // namespace

TEST(Jinja, TrimBlocksAndLstripBlocksAsTransformersCompiles) {
  // lstrip_blocks removes the indentation before a block tag, trim_blocks the newline after it.
  EXPECT_EQ(render("{% if true %}\n  yes\n  {% endif %}\nafter"), "  yes\nafter");
  // A variable tag keeps its surroundings.
  EXPECT_EQ(render("  {{ 'x' }}\n!"), "  x\n!");
  // One trailing newline of the template is dropped, as jinja2 does by default.
  EXPECT_EQ(render("a\n\n"), "a\n");
}

TEST(Jinja, MinusMarkersStripWhitespaceAndPlusKeepsIt) {
  EXPECT_EQ(render("a  \n {{- 'b' -}} \n  c"), "abc");
  EXPECT_EQ(render("a\n  {%- if true -%}\n  b  {%- endif %}"), "ab");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("{# comment #}\nz"), "z");
}

TEST(Jinja, LoopsSlicesAndNamespaces) {
  EXPECT_EQ(render("{% for x in [1, 2, 3] if x != 2 %}{{ loop.index }}{{ x }}{{ ',' if not loop.last }}{% endfor %}"),
            "11,23");
  EXPECT_EQ(render("{{ [1, 2, 3, 4][1:] }}|{{ 'abc'[::-1] }}|{{ [1, 2, 3][-2:] }}"), "[2, 3, 4]|cba|[2, 3]");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"),
            "6");
  // A plain `set` inside a loop does not outlive its iteration.
  EXPECT_EQ(render("{% set x = 5 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"), "5");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for i in [1, 2, 3] %}{{ loop.cycle('a', 'b') }}{% endfor %}{{ 3 > 2 > 1 }}{{ {'a': {'b': 1}} }}"),
            "abaTrue{'a': {'b': 1}}");
  EXPECT_EQ(render("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "012");
}

TEST(Jinja, ValuesPrintAsPythonAndJsonAsTransformers) {
  EXPECT_EQ(render("{{ none }} {{ true }} {{ 1.0 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 'a' ~ 1 }}"),
            "None True 1.0 3.5 3 2 a1");
  EXPECT_EQ(render("{{ {'a': [1, 'é\"'], 'b': none} | tojson }}"), "{\"a\": [1, \"é\\\"\"], \"b\": null}");
  EXPECT_EQ(render("{{ {'a': 1} | tojson(indent=2) }}"), "{\n  \"a\": 1\n}");
  EXPECT_EQ(render("{{ ['x', \"it's\"] }}"), "['x', \"it's\"]");
  EXPECT_EQ(render("{{ ['b', 'A', 'c'] | sort | join(',') }}|{{ {'b': 1, 'a': 2} | dictsort }}"), "A,b,c|[('a', 2), ('b', 1)]");
  EXPECT_EQ(render("{{ {'k': 1}.items() | list }} {{ (1,) }} {{ ('a', [2]) }}"), "[('k', 1)] (1,) ('a', [2])");
  EXPECT_EQ(render("{{ '%s=%r' | format('k', 'v') }}|{{ '  a b  '.split() }}|{{ 'a,b'.split(',') }}"),
            "k='v'|['a', 'b']|['a', 'b']");
}

TEST(Jinja, MacrosAndCallBlocks) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}hi {{ name }}{{ punct }}{% endmacro %}{{ greet('bo') }}"),
            "hi bo!");
  EXPECT_EQ(render("{% macro wrap() %}[{{ caller() }}]{% endmacro %}{% call wrap() %}in{% endcall %}"), "[in]");
}

TEST(Jinja, ErrorsNameTheLineAndTheUnsupportedFeature) {
  const std::string filter = error_of([] { render("line one\n\n{{ 'x' | wordwrap }}"); });
  EXPECT_NE(filter.find("chat template line 3"), std::string::npos) << filter;
  EXPECT_NE(filter.find("unknown filter 'wordwrap'"), std::string::npos) << filter;
  const std::string statement = error_of([] { jinja::Template("a\n{% include 'x' %}"); });
  EXPECT_NE(statement.find("line 2: statement 'include' is not supported"), std::string::npos) << statement;
  const std::string method = error_of([] { render("{% set l = [] %}\n{{ l.append(1) }}"); });
  EXPECT_NE(method.find("line 2: method 'list.append' is not supported"), std::string::npos) << method;
  const std::string test = error_of([] { render("{{ 1 is prime }}"); });
  EXPECT_NE(test.find("unknown test 'prime'"), std::string::npos) << test;
  const std::string raised = error_of([] { render("\n\n{{ raise_exception('roles must alternate') }}"); });
  EXPECT_NE(raised.find("line 3: the template raised an error: roles must alternate"), std::string::npos) << raised;
  const std::string unclosed = error_of([] { jinja::Template("{% if x %}\nno end"); });
  EXPECT_NE(unclosed.find("line 1: block is not closed with {% endif %}"), std::string::npos) << unclosed;
}

TEST(Jinja, LimitsStopRunawayTemplates) {
  jinja::RenderLimits small;
  small.max_steps = 1000;
  const std::string loops =
      error_of([&] { render("{% for i in range(100) %}{% for j in range(100) %}x{% endfor %}{% endfor %}", {}, small); });
  EXPECT_NE(loops.find("more than 1000 steps"), std::string::npos) << loops;
  const std::string recursion = error_of([] { render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{{ f(0) }}"); });
  EXPECT_NE(recursion.find("calls nest deeper than 64 levels"), std::string::npos) << recursion;
  jinja::RenderLimits tiny;
  tiny.max_output_bytes = 100;
  const std::string output = error_of([&] { render("{% for i in range(1000) %}abc{% endfor %}", {}, tiny); });
  EXPECT_NE(output.find("output exceeds 100 bytes"), std::string::npos) << output;
  std::string deep(500, '(');
  deep += "1" + std::string(500, ')');
  const std::string nesting = error_of([&] { jinja::Template("{{ " + deep + " }}"); });
  EXPECT_NE(nesting.find("nests deeper than"), std::string::npos) << nesting;
  const std::string range = error_of([] { render("{% for i in range(10000000) %}{% endfor %}"); });
  EXPECT_NE(range.find("range() is longer than"), std::string::npos) << range;
}

TEST(Jinja, IntegerOverflowIsRefusedNeverWrappedNorATrap) {
  // INT64_MIN // -1 and % -1 trap (SIGFPE) on x86 when done naively; Python gives 2**63 and 0.
  EXPECT_NE(error_of([] { render("{{ (-9223372036854775807 - 1) // -1 }}"); }).find("chat template line 1:"), std::string::npos);
  EXPECT_EQ(render("{{ (-9223372036854775807 - 1) % -1 }}"), "0");
  EXPECT_EQ(render("{{ 7 // -1 }} {{ -7 % 3 }} {{ 7 % -3 }}"), "-7 2 -2");
  for (const char* overflowing : {"{{ 9223372036854775807 + 1 }}", "{{ -9223372036854775807 - 2 }}",
                                  "{{ 9223372036854775807 * 2 }}", "{{ 2 ** 63 }}", "{{ 10 ** 20 }}",
                                  "{{ -(-9223372036854775807 - 1) }}", "{{ (-9223372036854775807 - 1) | abs }}"})
    EXPECT_NE(error_of([&] { render(overflowing); }).find("does not fit in 64 bits"), std::string::npos) << overflowing;
  // Exact integer powers, not pow() through a double.
  EXPECT_EQ(render("{{ 3 ** 39 }} {{ 9007199254740993 ** 1 }} {{ (-2) ** 63 }}"),
            "4052555153018976267 9007199254740993 -9223372036854775808");
  EXPECT_NE(error_of([] { render("{{ 0 ** -1 }}"); }), "");
}

TEST(Jinja, HugeSlicesRangesAndBuiltValuesAreSafe) {
  EXPECT_EQ(render("{{ [1,2,3][2::9223372036854775806] }}"), "[3]");
  EXPECT_EQ(render("{{ 'abc'[2::9223372036854775807] }}{{ 'abc'[::-9223372036854775807] }}"), "cc");
  EXPECT_EQ(render("{{ range(0, 9223372036854775807, 4611686018427387904) | list }}"), "[0, 4611686018427387904]");
  EXPECT_EQ(render("{{ range(9223372036854775807, -9223372036854775807 - 1, -9223372036854775807) | list }}"),
            "[9223372036854775807, 0, -9223372036854775807]");
  for (const char* huge : {"{{ (('a' * 100000) * 100000) | length }}", "{% set ns = namespace(s='a' * 100000) %}"
                           "{% for i in range(9) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}", "{{ ([1] * 100000) * 1000 }}"})
    EXPECT_NE(error_of([&] { render(huge); }).find("larger than 16777216"), std::string::npos) << huge;
}

TEST(Jinja, NumberLiteralsOutOfDoubleRangeReadAsPython) {
  EXPECT_EQ(render("{{ 5e-324 }} {{ 1e-320 }} {{ 1e400 }}"), "5e-324 1e-320 inf");
}

TEST(Jinja, JsonIntegersBeyondInt64AreRefused) {
  const auto big = nlohmann::ordered_json::parse("18446744073709551615");
  EXPECT_THROW(jinja::Value::from_json(big), Error);
  EXPECT_EQ(jinja::Value::from_json(nlohmann::ordered_json::parse("9223372036854775807")).integer, INT64_MAX);
}

TEST(ChatTemplate, RefusesAMissingTemplate) { EXPECT_THROW(compile_chat_template(""), Error); }

TEST(ChatTemplate, HistoryAndOpeningComeFromTheTemplate) {
  const ChatTemplate t = compile_chat_template(
      std::string("{% if messages[0].role != 'system' %}{{ '<|im_start|>system\\nDefault<|im_end|>\\n' }}{% endif %}") +
      kChatML);
  const std::vector<ChatMessage> conv = {{"user", "q"}, {"assistant", "a"}};
  EXPECT_EQ(render_chat_history(t, conv),
            "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n");
  EXPECT_EQ(render_chat_opening(t, conv), "<|im_start|>system\nDefault<|im_end|>\n");
  EXPECT_EQ(render_chat_opening(t, {{"system", "Mine"}, {"user", "q"}}), "<|im_start|>system\nMine<|im_end|>\n");
  EXPECT_EQ(render_chat_opening(compile_chat_template(kChatML), conv), "");
}

TEST(ChatTemplate, ATemplateNotTurnByTurnRendersButRefusesHistory) {
  // Only the last message shows: no text is put before every user turn. Found once at compile time: history is
  // refused with the same error every time it is asked for (the loop), and the opening is empty.
  const ChatTemplate t = compile_chat_template("{{ messages[-1].role }}: {{ messages[-1].content }}");
  EXPECT_EQ(render_chat(t, {{"user", "q"}}, false), "user: q");
  const std::vector<ChatMessage> conv = {{"user", "q"}, {"assistant", "a"}};
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(error_of([&] { render_chat_history(t, conv); }),
              "the chat template does not render a conversation turn by turn");
  EXPECT_EQ(render_chat_opening(t, conv), "");
}

TEST(ChatTemplate, MessageExtrasReachTheTemplate) {
  const ChatTemplate t = compile_chat_template(
      "{% for m in messages %}{{ m.role }}:{{ m.content if m.content is defined else '-' }}"
      "{% for c in m.tool_calls or [] %}[{{ c.function.name }}]{% endfor %};{% endfor %}{{ enable_thinking }}");
  ChatMessage call{"assistant", "", {{"tool_calls", {{{"function", {{"name", "f"}}}}}}, {"content", nullptr}}};
  EXPECT_EQ(render_chat(t, {{"user", "hi"}, call}, false, {{"enable_thinking", false}}), "user:hi;assistant:-[f];False");
}

}  // namespace hs
