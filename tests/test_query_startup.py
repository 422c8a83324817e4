"""analysis.sql / analysis.query start without torch: the suites' declarations load alone,
their implementations on first use (issue 23, item 5). Timings are in bench/cli_startup.py."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from neuroreg.evaluate.suite import register_suite
from neuroreg.evaluate.suites import IMPLEMENTED, SUITES, declare_suite

PROJECT = Path(__file__).resolve().parents[1]
BUILT_IN = ("clean", "noise", "adversarial", "transfer", "boundary", "corruptions", "frequency")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=120)


def test_sql_and_query_import_no_torch_and_no_suite_module():
    p = _python("""
        import sys
        import analysis.sql, analysis.query
        from analysis.schema import TABLES
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "foolbox", "ray")
                       or m in ("neuroreg.evaluate.noise", "neuroreg.evaluate.corruptions", "neuroreg.evaluate.runner"))
        assert not heavy, heavy
        # the declarations still give every record table its view
        assert {"clean", "noise", "adversarial", "adversarial_summary", "corruptions", "frequency"} <= set(TABLES)
    """)
    assert p.returncode == 0, p.stderr


def test_a_declared_suite_loads_its_module_on_first_use_in_declared_order():
    p = _python("""
        import sys
        import neuroreg.evaluate.noise  # an implementation first: the declarations still set the order
        from neuroreg.evaluate.suites import SUITES, suite_names
        assert suite_names() == BUILT_IN, suite_names()
        assert "neuroreg.evaluate.corruptions" not in sys.modules
        from neuroreg.config import RunConfig
        names = SUITES.get("corruptions", "x").metrics(RunConfig.from_dict({}))
        assert "neuroreg.evaluate.corruptions" in sys.modules
        assert any(n.startswith("corruption_acc_") for n in names), names
    """.replace("BUILT_IN", repr(BUILT_IN)))
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_declaration_is_bound_to_its_modules_run_function(name):
    suite = SUITES.get(name, "suites").load()
    module = importlib.import_module(suite.module)
    assert IMPLEMENTED[name][0] is module.run_suite


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A suite module on sys.path; the registry is restored afterwards."""
    entries, implemented = dict(SUITES._entries), dict(IMPLEMENTED)
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module: str, body: str) -> str:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
        return module

    yield write
    SUITES._entries = entries
    IMPLEMENTED.clear()
    IMPLEMENTED.update(implemented)
    for m in [m for m in sys.modules if m.startswith("plugin_")]:
        del sys.modules[m]


def test_a_declared_plugin_runs_through_its_declaration(plugin):
    mod = plugin("plugin_dark", """
        from neuroreg.evaluate.suite import SuiteOutput, register_suite

        @register_suite("dark", metrics=lambda cfg: {"dark_acc"})
        def run_suite(ctx):
            return SuiteOutput({"dark": [{"n": ctx}]}, {"dark_acc": 0.5})
    """)
    suite = declare_suite("dark", mod, headline=("dark_acc",))
    assert mod not in sys.modules  # declared, not imported
    assert suite.metrics(None) == {"dark_acc"}
    assert suite.run(3).records == {"dark": [{"n": 3}]}
    assert [s.name for s in SUITES][-1] == "dark"


def test_a_module_that_contradicts_its_declaration_is_refused(plugin):
    mod = plugin("plugin_bad", """
        from neuroreg.evaluate.suite import register_suite

        @register_suite("bad", metrics=lambda cfg: set(), headline=("other_metric",))
        def run_suite(ctx):
            return None
    """)
    suite = declare_suite("bad", mod, headline=("bad_acc",))
    with pytest.raises(ValueError, match=r"headline=\('other_metric',\).*declares \('bad_acc',\)"):
        suite.metrics(None)


def test_a_declared_module_without_a_registration_says_what_is_missing(plugin):
    mod = plugin("plugin_empty", "X = 1\n")
    suite = declare_suite("empty", mod)
    with pytest.raises(RuntimeError, match=r"registers no run function.*@register_suite\('empty'"):
        suite.run(None)


def test_an_undeclared_suite_is_complete_at_once_and_a_second_name_is_refused(plugin):
    @register_suite("glow", metrics=lambda cfg: {"glow_acc"}, needs_surrogate=True)
    def run_suite(ctx):
        return ctx

    glow = SUITES.get("glow", "suites")
    assert glow.run is run_suite and glow.needs_surrogate and glow.module is None
    with pytest.raises(ValueError, match="twice"):
        register_suite("noise", metrics=lambda cfg: set())(run_suite)  # not noise's own module
