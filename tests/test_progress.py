"""Progress off a terminal: a plain line at a fixed interval, and a first ETA that ignores the warm-up."""
import io

import pytest

from mamlkit.progress import LogProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_lines_at_a_fixed_interval_with_a_steady_eta():
    clock, out = FakeClock(), io.StringIO()
    bar = LogProgress(desc="run", total=1000, interval=30.0, file=out, clock=clock)
    clock.t = 20.0  # the first step is slow (warm-up: 20 s) ...
    bar.update()
    for _ in range(60):  # ... then 1 s per step
        clock.t += 1.0
        bar.set_postfix(meta_loss=0.5)
        bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 30 s and at 60 s, nothing in between
    first = lines[0]
    assert first.startswith("run  11/1000 (1.1%)") and "1 it/s" in first and "meta_loss=0.5" in first
    # 989 steps left at the steady 1 step/s: 16m29s. Counting the warm-up would say 0.37 it/s, 45 minutes.
    assert "ETA 16m29s" in first
    bar.close()
    bar.close()  # once only
    assert len(out.getvalue().splitlines()) == 3 and out.getvalue().splitlines()[-1].startswith("run  61/1000")


def test_resumed_runs_count_from_where_they_start():
    clock, out = FakeClock(), io.StringIO()
    bar = LogProgress(desc="run", total=100, initial=90, interval=5.0, file=out, clock=clock)
    for _ in range(10):
        clock.t += 1.0
        bar.update()
    assert out.getvalue().splitlines()[0].startswith("run  95/100 (95.0%)")


def test_a_terminal_gets_tqdm_and_a_file_gets_log_lines():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_bar(total=3, file=io.StringIO()), LogProgress)
    bar = progress_bar(total=3, file=Tty())
    assert type(bar).__name__ == "tqdm" or "tqdm" in type(bar).__module__
    bar.close()
    assert list(progress_bar(range(3), file=io.StringIO())) == [0, 1, 2]
    with pytest.raises(ValueError, match="interval"):
        LogProgress(total=3, interval=0)


def test_a_few_shot_run_logs_under_its_checkpoint_name(tmp_path, capsys):
    # two study runs that differ only in the inner loop share config.name; their log lines must not
    import torch

    from mamlkit.experiments.fewshot import FewShotConfig, train_fewshot
    config = FewShotConfig(n_way=3, k_shot=1, q_query=2, meta_batch_size=2, width=4, downsample="stride",
                           iterations=2, inner_lr=0.4)
    data = torch.randint(0, 256, (6, 4, 28, 28), dtype=torch.uint8)
    train_fewshot(config, checkpoint_path=tmp_path / "5w1s_fomaml_5steps_s0.pt", data=data, progress=True)
    train_fewshot(config, checkpoint_path=tmp_path / f"{config.name}.pt", data=data, progress=True)
    first, second = capsys.readouterr().err.strip().splitlines()
    assert first.startswith(f"5w1s_fomaml_5steps_s0 ({config.name})  2/2"), first
    assert second.startswith(f"{config.name}  2/2"), second  # named after its config: said once
