"""The one gap filler (moe.gaps), used by Time-MoE, the statistical experts and seasons."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from moe.gaps import fill_gaps, fill_row

NAN = math.nan


def test_fill_gaps_policy() -> None:
    """Guards the NaN policy: interior linear, trailing carried forward, leading left missing."""
    values = torch.tensor([[NAN, 1.0, NAN, NAN, 4.0, NAN], [2.0, NAN, 6.0, 5.0, NAN, NAN]])
    filled, observed = fill_gaps(values)
    expected = torch.tensor([[NAN, 1.0, 2.0, 3.0, 4.0, 4.0], [2.0, 4.0, 6.0, 5.0, 5.0, 5.0]])
    torch.testing.assert_close(filled, expected, equal_nan=True)
    assert torch.equal(observed, ~torch.isnan(values))


def test_fill_row_holds_or_drops_the_tail_and_drops_the_head() -> None:
    """Guards the row form the statistical experts (hold) and season detection (drop) use."""
    row = np.array([NAN, 1.0, NAN, 3.0, NAN, NAN], np.float32)
    np.testing.assert_array_equal(fill_row(row), [1.0, 2.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(fill_row(row, trailing="drop"), [1.0, 2.0, 3.0])
    assert fill_row(row).dtype == np.float64
    assert fill_row(np.full(4, NAN)).shape == (0,)
    clean = np.array([1.0, 2.0])
    out = fill_row(clean)
    assert out.tolist() == [1.0, 2.0] and out is not clean  # a copy, never the caller's array


def test_fill_row_takes_a_read_only_row_silently() -> None:
    """Guards the copy in fill_row: a read-only row with gaps (an Arrow column's view) gives
    no torch 'non-writable' warning on stderr. In a fresh interpreter, because torch warns
    only once per process and another test may already have triggered it."""
    script = (
        "import numpy as np\n"
        "from moe.gaps import fill_row\n"
        "row = np.array([1.0, np.nan, 3.0, np.nan, 5.0])\n"
        "row.setflags(write=False)\n"
        "assert fill_row(row).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
