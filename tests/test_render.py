"""benchmarks.render and benchmarks.records: the committed docs are what the records generate, a hand edit is caught,
every record reads, an unknown kind of record still renders, the impl table says what available_impls says."""

import json
import os
import re
import shutil

import pytest

from benchmarks import records, render

REPO = render.REPO


def _copy_docs(dst) -> str:
    """The files render reads and writes, copied under dst (so a test never touches the real ones)."""
    for rel in ("README.md", "benchmarks/README.md"):
        os.makedirs(os.path.dirname(os.path.join(dst, rel)) or dst, exist_ok=True)
        shutil.copy(os.path.join(REPO, rel), os.path.join(dst, rel))
    shutil.copytree(os.path.join(REPO, "docs"), os.path.join(dst, "docs"))
    shutil.copytree(os.path.join(REPO, render.RESULTS), os.path.join(dst, render.RESULTS))
    return str(dst)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _copy_docs(tmp_path_factory.mktemp("tree"))


def test_check_passes_on_the_committed_tree(capsys):
    assert render.main(["--check"]) == 0, capsys.readouterr().out


def test_check_fails_after_a_number_in_results_md_is_edited_by_hand(tree, capsys):
    path = os.path.join(tree, render.RESULTS_DOC)
    text = open(path).read()
    m = re.search(r"\| (\d+\.\d+) \|", text)  # the first number in a table cell
    line = text[: m.start()].count("\n") + 1
    edited = text[: m.start(1)] + f"{float(m[1]) * 2:.1f}" + text[m.end(1):]
    try:
        with open(path, "w") as f:
            f.write(edited)
        assert render.main(["--check", "--root", tree]) == 1
        out = capsys.readouterr().out
        assert f"{render.RESULTS_DOC} (committed)" in out  # which file
        assert re.search(rf"^@@ -{line - 1},", out, re.M)  # which line (the hunk starts one line of context above)
    finally:
        with open(path, "w") as f:
            f.write(text)
    assert render.main(["--check", "--root", tree]) == 0


def test_check_fails_when_a_generated_block_is_edited(tree, capsys):
    path = os.path.join(tree, "README.md")
    text = open(path).read()
    start = text.index("<!-- results:begin -->")
    edited = text[:start] + text[start:].replace("**", "", 2)  # un-bold the first measured ratio
    try:
        with open(path, "w") as f:
            f.write(edited)
        assert render.main(["--check", "--root", tree]) == 1
        assert "README.md (committed)" in capsys.readouterr().out
    finally:
        with open(path, "w") as f:
            f.write(text)


def test_render_regenerates_what_was_removed(tmp_path, capsys):
    root = _copy_docs(tmp_path)
    results = os.path.join(root, render.RESULTS_DOC)
    committed = open(results).read()
    os.remove(results)
    readme = os.path.join(root, "README.md")
    full = open(readme).read()
    emptied = re.sub(r"(<!-- impls:begin -->\n).*?(<!-- impls:end -->)", r"\1\2", full, flags=re.S)
    assert emptied != full
    open(readme, "w").write(emptied)
    assert render.main(["--check", "--root", root]) == 1
    assert render.main(["--root", root]) == 0
    assert open(results).read() == committed and open(readme).read() == full
    capsys.readouterr()


def test_every_committed_record_reads_and_says_how_it_was_made():
    recs = records.read_all(os.path.join(REPO, render.RESULTS), REPO)
    assert recs
    for r in recs:
        assert r.benchmark and r.device and r.date and r.commit and r.versions, r.path
        assert r.command, (f"{r.path}: no command; add it as \"record\": {{\"command\": ...}} (and "
                           "\"added_later\" saying where it came from) at the top level of the file")
    # every e2e record of the results doc is there, with its command
    doc = open(os.path.join(REPO, render.RESULTS_DOC)).read()
    for r in recs:
        assert os.path.basename(r.path) in doc and r.command in doc


def test_an_unknown_kind_of_record_gets_a_generic_table(tmp_path):
    rec = records.new_record("stream_triad", "NVIDIA H100 80GB HBM3", "python stream.py",
                             [{"kernel": "triad", "gb_per_s": 3050, "bytes": 96},
                              {"kernel": "copy", "gb_per_s": 2980, "bytes": 64}], notes="one pass")
    doc = _results_doc_of(tmp_path, rec, "stream_triad-h100.json")
    assert "## NVIDIA H100 80GB HBM3" in doc and "### stream_triad" in doc
    assert "| kernel | gb_per_s | bytes |" in doc and "| copy | 2980 | 64 |" in doc
    assert "python stream.py" in doc and "one pass" in doc
    assert f"git {rec['commit']}" in doc


def test_a_kernel_resources_record_is_summarised_per_kernel_config_and_arch(tmp_path):
    def row(dtype, registers, spills, warps, status="ok"):
        return {"kind": "triton", "kernel": "grn._apply_kernel", "config": "BLOCK_C=64, num_warps=4", "arch": "sm_90a",
                "dtype": dtype, "status": status, "registers": registers, "spill_stores": spills, "spill_loads": 0,
                "warps_per_sm": warps, "compile_s": 0.5}
    rec = records.new_record("kernel_resources", "compile-only sm_90a", "python -m benchmarks.kernel_resources",
                             [row("fp32", 40, 0, 48), row("bf16", 72, 8, 24), row("fp64", 0, 0, 0, status="timeout")])
    doc = _results_doc_of(tmp_path, rec, "kernel_resources-sm90a.json")
    # the three dtypes fold into one line: the worst registers, the spills summed, the fewest warps, the bad statuses
    line = [x for x in doc.splitlines() if "`grn._apply_kernel`" in x]
    assert len(line) == 1 and "| 3 | 72 | 8 | 24 |" in line[0] and line[0].rstrip().endswith("| timeout |"), line
    # a kernel_resources record whose rows lack the fields the summary needs still renders, as a generic table
    odd = records.new_record("kernel_resources", "compile-only sm_80", "python -m benchmarks.kernel_resources",
                             [{"kernel": "dwconv_fwd", "registers": 96}])
    assert "| dwconv_fwd | 96 |" in _results_doc_of(tmp_path / "odd", odd, "kernel_resources-odd.json")


def _results_doc_of(root, rec, name):
    folder = root / render.RESULTS
    folder.mkdir(parents=True)
    records.write_record(str(folder / name), rec)
    return render.results_doc(render.Context(str(root), records.read_all(str(folder), str(root)), "docs"))


def test_a_file_that_is_no_record_is_named_with_what_is_missing(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"benchmark": "k", "device": "cpu", "results": []}))
    with pytest.raises(records.RecordError, match=r"x.json: the record lacks date, commit, command, versions"):
        records.read(str(path))
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(records.RecordError, match=r"x.json: not a record in any known format"):
        records.read(str(path))
    path.write_text(json.dumps({"context": {"device": "cpu", "date": "d", "git": "g", "command": "c"}, "results": [],
                                "record": {"comand": "typo"}}))
    with pytest.raises(records.RecordError, match=r"'record' object may hold .*not comand"):
        records.read(str(path))


def test_speedups_compare_within_a_group_and_an_execution_mode():
    row = dict(size="atto", geometry="56/8", precision="bf16", batch=256, tasks="all", mask_ratio=0.6)
    rows = [dict(row, backend="dense", ms_step=100.0), dict(row, backend="dense-plain", ms_step=80.0),
            dict(row, backend="sparse", ms_step=25.0), dict(row, backend="dense-graphed", ms_step=50.0),
            dict(row, backend="sparse-graphed", ms_step=10.0), dict(row, backend="sparse", mask_ratio=0.4, ms_step=1.0)]
    s = render.e2e_speedups(rows)
    assert s[id(rows[2])] == {"dense": 4.0, "dense-plain": 3.2}
    assert s[id(rows[4])] == {"dense": 5.0}  # graphed against graphed; no graphed dense-plain in the run
    assert s[id(rows[5])] == {}  # another mask ratio: no baseline in its group


def test_backend_text_names_exactly_the_encoder_backends():
    from mmearth_kernels.models.backends import BACKENDS

    assert [name for name, _, _ in render.backend_rows()] == list(BACKENDS)


def _impls_block(path: str) -> dict[str, dict[str, set[str]]]:
    text = open(path).read()
    block = text[text.index("<!-- impls:begin -->"): text.index("<!-- impls:end -->")]
    rows = [line.strip("|").split("|") for line in block.splitlines() if line.startswith("| `")]
    return {op.strip(" `"): {"cpu": set(re.findall(r"`(\w+)`", cpu)), "cuda": set(re.findall(r"`(\w+)`", cuda))}
            for op, cpu, cuda in rows}


@pytest.mark.parametrize("doc", ["README.md", "docs/ops.md"])
def test_the_impl_table_says_what_available_impls_says(doc):
    """Read the committed table itself, not render's code, and compare it with the library."""
    import inspect

    from mmearth_kernels import ops
    from mmearth_kernels.triton_kernels import HAS_TRITON

    table = _impls_block(os.path.join(REPO, doc))
    public = {n for n in ops.__all__ if callable(getattr(ops, n)) and
              "impl" in inspect.signature(getattr(ops, n)).parameters}
    assert set(table) == public
    for op, cells in table.items():
        assert cells["cpu"] == set(ops.available_impls(op, "cpu")) - {"triton"}, op
        assert cells["cuda"] == set(ops.available_impls(op, "cuda")) - {"triton"} | ({"triton"} if HAS_TRITON
                                                                                      else set()), op


# numbers a measurement gives (not model arithmetic, tolerances or settings): outside generated blocks they were typed
MEASURED = re.compile(r"\d[\d.,]*(x\b|\s?(ms\b|ms/step|img/s|samples/s|GB/s|MiB\b|GiB\b))")


@pytest.mark.parametrize("doc", ["README.md", "docs/ops.md", "docs/backends.md", "docs/training.md",
                                 "docs/interop.md", "docs/upstream-differences.md"])
def test_no_measured_number_is_typed_by_hand(doc):
    text = open(os.path.join(REPO, doc)).read()
    typed = render.BLOCK.sub("", text)
    assert not MEASURED.findall(typed), [m.group(0) for m in MEASURED.finditer(typed)]
