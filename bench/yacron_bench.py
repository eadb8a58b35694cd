"""yacron's lateness: a ``* * * * *`` job that starts a Python one-liner, which is what a yacron
user must do to run a Python function (yacron runs shell commands, at minute resolution).

The one-liner appends ``time.time()`` to a file as its first statement, so lateness is the
moment the Python code starts minus the minute it was scheduled for, Python's own start-up
included."""

from __future__ import annotations

import math
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import common
from anchors import yacron_config


@dataclass(kw_only=True)
class YacronLateness:
    minutes: int
    starts: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    max_ms: float | None = None
    missed: int = 0
    doubled: int = 0
    other_load: float | None = None
    alongside_other_parts: bool = False  # --quick overlaps it with the other parts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pending:
    """yacron started and waiting for its minute boundaries; ``finish`` collects them."""

    def __init__(self, *, quick: bool, alongside: bool) -> None:
        self.minutes = 1 if quick else 3
        self.alongside = alongside
        work = common.fresh_dir("yacron-lateness")
        self.out = work / "starts.txt"
        one_liner = "import time; print(time.time())"
        command = (
            f"{shlex.quote(common.PYTHON)} -c {shlex.quote(one_liner)}"
            f" >> {shlex.quote(str(self.out))}"
        )
        config = yacron_config.write_config(work / "yacron.yaml", [("tick", "* * * * *", command)])
        self._log = (work / "output.log").open("wb")
        self.proc = common.spawn(
            [common.anchor_bin("yacron"), "-c", str(config)],
            cwd=work,
            env=common.bench_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        # The first boundary at least 3 s away, so yacron is up before it.
        self.first = math.ceil((time.time() + 3) / 60) * 60
        self.last = self.first + 60 * (self.minutes - 1)
        self.other = common.OtherLoad(self.proc.pid)
        print(
            f"  yacron: started; measuring the fire{'s' if self.minutes > 1 else ''} at "
            f"{self.minutes} minute boundar{'y' if self.minutes == 1 else 'ies'}, the last "
            f"{self.last - time.time():.0f} s from now"
            + (" (alongside the other parts: --quick)" if alongside else "")
        )

    def finish(self) -> YacronLateness:
        result = YacronLateness(minutes=self.minutes, alongside_other_parts=self.alongside)
        try:
            # Python starts in well under 5 s; a start later than that counts as missed.
            common.sleep_until(self.last + 5)
            result.other_load = self.other.cores()
            if self.proc.poll() is not None:
                raise RuntimeError(f"yacron exited early with {self.proc.returncode}")
        finally:
            common.stop(self.proc)
            self._log.close()
        stamps = [float(x) for x in self.out.read_text().split()] if self.out.exists() else []
        for boundary in range(self.first, self.last + 1, 60):
            mine = [t - boundary for t in stamps if boundary <= t < boundary + 60]
            if not mine:
                result.missed += 1
                continue
            result.doubled += len(mine) - 1
            result.lateness_ms.extend(round(x * 1000, 1) for x in mine)
        result.starts = len(result.lateness_ms)
        if result.lateness_ms:
            result.p50_ms = common.rounded(common.median(result.lateness_ms), 1)
            result.max_ms = max(result.lateness_ms)
        print(
            f"  yacron * * * * * python -c one-liner: lateness {result.lateness_ms} ms "
            f"(median {result.p50_ms}, max {result.max_ms}); missed {result.missed}, "
            f"doubled {result.doubled}; other load {result.other_load}"
        )
        return result


def measure(*, quick: bool) -> YacronLateness:
    return Pending(quick=quick, alongside=False).finish()
