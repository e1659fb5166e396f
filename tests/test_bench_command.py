"""bench.py's table head names the command as it was given, without the machine's scratch path."""
import bench   # scripts/ is on sys.path (conftest)


def test_the_head_shows_the_flags_and_hides_the_scratch_folder():
    assert bench.command_line([]) == "python scripts/bench.py"
    assert (bench.command_line(["--train-only", "--work", "/tmp/bw", "--model-dir", ".device/q"])
            == "python scripts/bench.py --train-only --work <scratch> --model-dir .device/q")
    assert bench.command_line(["--work=/tmp/bw", "--cpu"]) == "python scripts/bench.py --work=<scratch> --cpu"
