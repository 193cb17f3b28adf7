"""Marked blocks of a shared report: a benchmark rewrites its own section and keeps the rest."""

from normzoo.report import marked_blocks, write_block

START, END = "<!-- throughput:start -->", "<!-- throughput:end -->"


def test_write_block_appends_then_replaces_in_place(tmp_path):
    path = tmp_path / "perf.md"
    path.write_text("# Layers\n\nbody\n")
    write_block(path, START, END, f"{START}\nfirst\n{END}\n")
    assert path.read_text() == f"# Layers\n\nbody\n\n{START}\nfirst\n{END}\n"
    path.write_text(path.read_text() + "\n## after\n")
    write_block(path, START, END, f"{START}\nsecond\n{END}\n")
    text = path.read_text()
    assert "first" not in text and text.count(START) == 1
    assert text == f"# Layers\n\nbody\n\n{START}\nsecond\n{END}\n\n## after\n"


def test_write_block_creates_a_missing_file(tmp_path):
    path = tmp_path / "new.md"
    write_block(path, START, END, f"{START}\nx\n{END}\n")
    assert marked_blocks(path.read_text()) == [f"{START}\nx\n{END}"]


def test_marked_blocks_in_order_and_only_matching_pairs():
    text = (
        "intro\n<!-- a:start -->\n1\n<!-- a:end -->\nmiddle\n"
        "<!-- b-2:start -->\n2\n<!-- b-2:end -->\n<!-- c:start -->\nno end\n"
    )
    assert marked_blocks(text) == [
        "<!-- a:start -->\n1\n<!-- a:end -->",
        "<!-- b-2:start -->\n2\n<!-- b-2:end -->",
    ]
