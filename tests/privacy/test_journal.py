"""The privacy journal: charges priced as they ran, a torn line healed, never re-priced."""

import pytest

from fedray.privacy import DPFedAvgAccountant, DPSGDAccountant
from fedray.privacy.journal import FILENAME, Journaled, JournalError, read


def _dpsgd(z):
    return DPSGDAccountant(
        noise_multiplier=z, delta=1e-5, batch_size=10, local_epochs=1, examples={0: 50, 1: 50}
    )


def test_charges_priced_at_other_settings_are_refused_not_re_priced(tmp_path):
    # The review: DP-SGD at z = 0.6 (ε 29.5), then z = 5 into the same directory reported
    # ε 2.6, below the first run's own: its charges were re-priced at the new z.
    first = Journaled.open(_dpsgd(0.6), tmp_path / FILENAME)
    for _ in range(5):
        first.record([0, 1])
    with pytest.raises(JournalError, match=r"priced at other settings .*\(noise_multiplier\)"):
        Journaled.open(_dpsgd(5.0), tmp_path / FILENAME)
    again = Journaled.open(_dpsgd(0.6), tmp_path / FILENAME)  # the same settings: continued
    assert again.epsilon() == pytest.approx(first.epsilon())


def test_central_rounds_keep_their_own_noise_so_a_rerun_only_adds(tmp_path):
    first = Journaled.open(DPFedAvgAccountant(0.8, 0.5, 1e-5), tmp_path / FILENAME)
    for _ in range(3):
        first.record([0])
    more_noise = Journaled.open(DPFedAvgAccountant(5.0, 0.5, 1e-5), tmp_path / FILENAME)
    assert more_noise.epsilon() == pytest.approx(first.epsilon())  # the past as it ran
    more_noise.record([0])
    assert more_noise.epsilon() > first.epsilon()


def test_a_torn_last_line_is_cut_and_the_journal_resumes_again_and_again(tmp_path):
    path = tmp_path / FILENAME
    ledger = Journaled.open(DPFedAvgAccountant(1.0, 0.5, 1e-5), path)
    ledger.record([0])
    ledger.record([1])
    with path.open("a") as f:
        f.write('{"kind":"charge","session":0,"rou')  # the crash, mid-write
    for session in (1, 2):
        resumed = Journaled.open(DPFedAvgAccountant(1.0, 0.5, 1e-5), path, resumed_after=1)
        assert resumed.ledger.rounds == 1 + session
        resumed.record([0])
    kinds = [e["kind"] for e in read(path)]
    assert kinds == ["session", "charge", "charge", "session", "charge", "session", "charge"]
