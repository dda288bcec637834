"""The contract between processes: one enum per concept, and every list of signals derived from one."""

from __future__ import annotations

import signal

from corral.compat import SIGNALS
from corral.core.contract import BOOT_FAILURES, MASTER_SIGNALS, MasterSignal, RestartReason, WorkerExit


def test_the_signal_table_in_the_docs_covers_every_master_signal_but_chld_once() -> None:
    documented = [sig for signals, _, _ in SIGNALS for sig in signals]
    assert sorted(documented) == sorted(set(MASTER_SIGNALS) - {MasterSignal.CHLD})


def test_master_signals_are_the_operating_systems_numbers() -> None:
    assert all(sig == getattr(signal, f"SIG{sig.name}") for sig in MASTER_SIGNALS)


def test_only_app_load_and_lifespan_exits_are_boot_failures() -> None:
    assert set(BOOT_FAILURES) == {WorkerExit.APP_LOAD, WorkerExit.LIFESPAN}
    assert WorkerExit.OK not in BOOT_FAILURES and WorkerExit.CRASH not in BOOT_FAILURES


def test_restart_reason_labels_are_the_metric_label_values() -> None:
    assert [r.label for r in RestartReason] == [
        "start", "crash", "timeout", "max_requests", "memory", "lifetime", "reload", "scale", "upgrade",
        "boot_failure",
    ]  # fmt: skip
