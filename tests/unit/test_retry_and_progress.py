import random

import pytest

from streamer.errors import AccessDeniedError, TransferError, TransientError
from streamer.progress import ProgressTracker
from streamer.retry import Retrier, RetryPolicy
from streamer.sizes import format_size, parse_size


async def test_retries_transient_errors_with_growing_capped_delays():
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        if calls < 4:
            raise TransientError("s3://b/k", "503 SlowDown", status=503)
        return "ok"

    r = Retrier(RetryPolicy(max_attempts=5, base_delay=1, max_delay=3), sleep=sleep,
                rng=random.Random(1))  # fmt: skip
    assert await r.run("k", flaky) == "ok"
    assert calls == 4 and r.retries == 3
    assert len(slept) == 3 and all(0 <= d <= cap for d, cap in zip(slept, [1, 2, 3], strict=True))


async def test_gives_up_with_transfer_error_and_never_retries_fatal_errors():
    async def no_sleep(_: float) -> None:
        pass

    async def always():
        raise TransientError("u", "reset")

    r = Retrier(RetryPolicy(max_attempts=3), sleep=no_sleep)
    with pytest.raises(TransferError) as e:
        await r.run("u", always)
    assert e.value.attempts == 3

    calls = 0

    async def denied():
        nonlocal calls
        calls += 1
        raise AccessDeniedError("u")

    with pytest.raises(AccessDeniedError):
        await r.run("u", denied)
    assert calls == 1


def test_progress_rate_and_eta_with_injected_clock():
    now = [0.0]
    seen = []
    t = ProgressTracker(total_bytes=1000, total_files=2, callback=seen.append,
                        clock=lambda: now[0])  # fmt: skip
    now[0] = 1.0
    t.add_bytes(100)
    now[0] = 2.0
    t.add_bytes(100)
    s = t.snapshot()
    assert s.rate == pytest.approx(100.0)
    assert s.eta == pytest.approx(8.0)
    assert seen[-1].done_bytes == 200


@pytest.mark.parametrize(("text", "n"), [("16Mi", 16 << 20), ("2GiB", 2 << 30), ("1k", 1000),
                                         ("512", 512), ("1.5Gi", 3 << 29)])
def test_sizes(text, n):
    assert parse_size(text) == n


def test_format_size():
    assert format_size(3 << 30) == "3.0 GiB"
