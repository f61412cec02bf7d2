"""The package follows the Go contract: the scripts it ships are the Go
code's, byte for byte; every Go sentinel error has its class; every bad
call gets the documented error code; and it installs offline."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from conftest import REPO, SRC
from sluice import SCRIPT_NAMES, InvalidArgumentError, script_source
from sluice._core import map_error
from sluice.errors import GO_SENTINELS

GEN = "run `make python-scripts` to copy them again; never edit them by hand"


def test_scripts_are_the_go_scripts(sluice_bin: str, tmp_path: Path) -> None:
    out = subprocess.run([sluice_bin, "scripts", "dump", str(tmp_path)], capture_output=True, text=True, check=True)
    dumped = sorted(p.name for p in tmp_path.iterdir())
    assert dumped == sorted(f"{n}.lua" for n in SCRIPT_NAMES), f"lua.Names changed: {out.stdout} ({GEN})"
    shipped = SRC / "sluice" / "lua"
    assert sorted(p.name for p in shipped.glob("*.lua")) == dumped, GEN
    for name in SCRIPT_NAMES:
        go = (tmp_path / f"{name}.lua").read_bytes()  # lua.Source(name): what pkg/limiter loads
        assert (shipped / f"{name}.lua").read_bytes() == go, f"{name}.lua differs from lua.Source: {GEN}"
        assert script_source(name).encode() == go


def test_every_go_sentinel_has_a_class() -> None:
    text = (REPO / "pkg" / "limiter" / "errors.go").read_text()
    go = set(re.findall(r"^\s*(Err\w+)\s*=\s*errors\.New", text, re.M))
    assert go, "no sentinels found in pkg/limiter/errors.go"
    assert set(GO_SENTINELS) == go


# Bad calls straight to the scripts (the client checks most of these before
# sending): the reply's code, and the field the client's error names.
BAD = [
    ("register", 3, ["0", "1", "0", "0", "1", "1"], "capacity"),
    ("register", 3, ["1.5", "1", "0", "0", "1", "1"], "capacity"),
    ("register", 3, ["10", "0x10", "0", "0", "1", "1"], "refill_rate"),
    ("register", 3, ["10", "nan", "0", "0", "1", "1"], "refill_rate"),
    ("register", 3, ["10", "1", "86401", "0", "1", "1"], "cooldown_sec"),
    ("register", 3, ["10", "1", "0", "-1", "1", "1"], "breaker_threshold"),
    ("register", 3, ["10", "1", "0", "0", "0", "1"], "breaker_timeout_sec"),
    ("register", 3, ["10", "1", "0", "0", "1", "0.5"], "max_scale"),
    ("acquire", 5, ["0"], "n"),
    ("acquire", 5, [" 1"], "n"),
    ("acquire", 5, ["1", "inf"], "n"),
    ("acquire", 5, [], "n"),
    ("set_scale", 3, ["1.5", "py", ""], "scale"),
    ("set_scale", 3, ["-0", "py", ""], None),  # -0 is 0: accepted
    ("set_scale", 3, ["nan", "py", ""], "scale"),
    ("annotate", 2, ["level", "medium", "py"], "level"),
    ("annotate", 2, ["shadow", "2", "py"], "scale"),
    ("annotate", 2, ["colour", "x", "py"], "kind"),
    ("breaker", 2, ["explode", ""], "op"),
    ("cooldown", 2, ["start", "s", "r", "", ""], "op"),
    ("cooldown", 2, ["set", "s", "r", "1.5", ""], "duration_ms"),
    ("heartbeat", 1, ["dance", "id", "100"], "op"),
    ("heartbeat", 1, ["beat", "", "100"], "replica"),
    ("heartbeat", 1, ["beat", "id", "0"], "ttl_ms"),
    ("pressure", 1, ["meh", "1", "2", "1", "", "100"], "level"),
    ("pressure", 1, ["ok", "3", "2", "1", "", "100"], "queue_size"),
    ("pressure", 1, ["ok", "1", "2", "01", "", "100"], "seq"),
    ("pressure", 1, ["ok", "1", "2", "1", "", "0"], "ttl_ms"),
    ("lease", 1, ["grab", "me", "100"], "op"),
    ("lease", 1, ["acquire", "me", "x"], "ttl_ms"),
]


@pytest.mark.parametrize("name,nkeys,args,field", BAD)
def test_bad_calls_get_the_documented_code(r: "redis.Redis[bytes]", name: str, nkeys: int, args: list,
                                           field: str) -> None:
    cfg = r.register_script(script_source("register"))
    cfg(keys=["sluice:{p}:config", "sluice:{p}:bucket", "sluice:{p}:scale"], args=["10", "1", "60", "3", "30", "1"])
    keys = {1: ["sluice:pressure:{c}"] if name == "pressure" else ["k"],
            2: ["sluice:{p}:config", "sluice:{p}:scale" if name == "annotate" else "sluice:{p}:other"],
            3: ["sluice:{p}:config", "sluice:{p}:bucket", "sluice:{p}:scale"],
            5: ["sluice:{p}:" + k for k in ("config", "bucket", "scale", "breaker", "cooldown")]}[nkeys]
    s = r.register_script(script_source(name))
    if field is None:
        s(keys=keys, args=args)
        return
    with pytest.raises(redis.exceptions.ResponseError) as ei:
        s(keys=keys, args=args)
    assert str(ei.value).startswith(f"INVALID_ARGUMENT {field}=")
    err = map_error("p", ei.value)
    assert isinstance(err, InvalidArgumentError) and err.field == field and err.range


def test_unknown_provider_code(r: "redis.Redis[bytes]") -> None:
    s = r.register_script(script_source("acquire"))
    with pytest.raises(redis.exceptions.ResponseError, match=r"^UNKNOWN_PROVIDER sluice:\{nope\}:config"):
        s(keys=["sluice:{nope}:" + k for k in ("config", "bucket", "scale", "breaker", "cooldown")], args=["1"])


def test_pip_install_in_a_fresh_venv(tmp_path: Path) -> None:
    """`pip install ./clients/python` offline: a venv that sees the system's
    redis-py (Debian's python3-redis) and setuptools, no build isolation,
    no package index."""
    pkg = tmp_path / "python"  # a copy: the build writes build/ and *.egg-info beside the sources
    shutil.copytree(SRC.parent, pkg, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-build-isolation", "--no-index",
                          "--no-cache-dir", "--disable-pip-version-check", str(pkg)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    code = ("import sluice, sluice.aio, sluice.feedback, sluice.stream, sluice.coordinator, pathlib;"
            "assert 'site-packages' in sluice.__file__, sluice.__file__;"
            "assert len(sluice.script_source('acquire')) > 1000;"
            "assert (pathlib.Path(sluice.__file__).parent / 'py.typed').exists();"
            "print(sluice.__version__)")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr


# Numbers in replies and stored fields are read as the scripts write them,
# decimals, as Go's parseFloat reads them (TestParseFloatDecimalOnly): what
# acquire's guard decides on besides (hex, spaces) and what is not finite
# read as the default.
@pytest.mark.parametrize("text,want", [
    ("50", 50.0), ("-2.5", -2.5), ("+7", 7.0), (".5", 0.5), ("5.", 5.0), ("5e1", 50.0), ("1e-05", 1e-05),
    (b"1.5E+20", 1.5e20), (12, 12.0),
    ("0x32", 0.0), (" 50", 0.0), ("50 ", 0.0), ("5_0", 0.0), ("inf", 0.0), ("-Inf", 0.0), ("nan", 0.0),
    ("1e999", 0.0), ("0x1p4", 0.0), ("", 0.0), (".", 0.0), ("e5", 0.0), ("5e", 0.0), ("1.2.3", 0.0), ("٣", 0.0),
])
def test_numbers_read_as_decimals(text: object, want: float) -> None:
    from sluice._core import _float
    assert _float(text) == want
