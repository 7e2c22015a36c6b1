"""HTML to markdown on ChatGPT-rendered HTML (hand-written cases and generated scrapes)."""

from __future__ import annotations

from vicuna_cloud.data import synthetic
from vicuna_cloud.data.html_to_markdown import convert_value, looks_like_html

PROSE = synthetic.PROSE_DIV


def test_code_block_becomes_fenced_with_language_and_no_copy_button():
    html = PROSE + synthetic.code_block("python", "def f(x):\n    return x < 2 and x_y") + "</div>"
    md = convert_value(html)
    assert md == "```python\ndef f(x):\n    return x < 2 and x_y\n```"


def test_lists_tables_links_headings_emphasis():
    html = (PROSE + '<h2>Plan</h2><p>Use <strong>bold</strong>, <em>it</em>, <code>a_b</code> and '
            '<a href="https://x.org/a">a link</a>.</p><ol start="3"><li><p>three</p>'
            '<ul><li>nested</li></ul></li><li>four</li></ol>'
            '<table><thead><tr><th>k</th><th>v</th></tr></thead><tbody><tr><td>a|b</td>'
            '<td>1</td></tr></tbody></table><blockquote><p>quoted</p></blockquote></div>')
    assert convert_value(html) == (
        "## Plan\n\nUse **bold**, *it*, `a_b` and [a link](https://x.org/a).\n\n"
        "3. three\n   - nested\n4. four\n\n| k | v |\n| --- | --- |\n| a\\|b | 1 |\n\n> quoted")


def test_regenerate_counter_removed_only_when_glued():
    assert convert_value("2 / 2write a poem") == "write a poem"
    assert convert_value("1 / 1" + PROSE + "<p>Hi</p></div>") == "Hi"
    assert convert_value("3 / 4 of the cake is gone") == "3 / 4 of the cake is gone"


def test_plain_text_with_html_inside_is_left_alone():
    q = "Why does <div>{{ name }}</div> render empty? a_b * c"
    assert not looks_like_html(q)
    assert convert_value(q) == q


def test_deep_nesting_loses_no_text():
    html = "<div><p>top</p>" + "<div>" * 400 + "deep text" + "</div>" * 400 + "</div>"
    md = convert_value(html)
    assert "top" in md and "deep text" in md


def test_generated_scrapes_leave_no_ui_noise():
    convs = synthetic.generate(150, seed=11)
    n_code = 0
    for conv in convs:
        for turn in conv["conversations"]:
            md = convert_value(turn["value"])
            assert "Copy code" not in md
            assert '<div class="markdown' not in md and "<span" not in md
            assert "hljs" not in md
            n_code += md.count("```") // 2
            if "language-python" in turn["value"]:
                assert "```python\n" in md
    assert n_code > 50  # the corpus really exercised code blocks


def test_spaces_between_inline_elements_survive():
    assert convert_value("<ul><li><b>a</b> <i>b</i></li></ul>") == "- **a** *b*"
    assert convert_value("<div><p>x</p>\n<p>y</p> tail <b>z</b></div>") == "x\n\ny\n\ntail **z**"
