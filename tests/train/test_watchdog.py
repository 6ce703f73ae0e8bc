"""The stall watchdog fires once no step has finished for its timeout (and not before the first step)."""

import time

from qwencoder_jax.train.watchdog import Watchdog


def test_fires_after_the_timeout_counted_from_the_last_step():
    fired = []
    watchdog = Watchdog(0.3, on_stall=fired.append, poll_seconds=0.02).start()
    time.sleep(0.5)
    assert not fired  # no step finished yet: compilation is not timed
    for step in range(1, 6):
        watchdog.progress(step)
        time.sleep(0.1)
    assert not fired
    time.sleep(0.6)
    watchdog.close()
    assert len(fired) == 1 and "after step 5" in fired[0] and "resume from the last complete checkpoint" in fired[0]
