import json, os, time
from pathlib import Path
import pytest
@pytest.mark.timeout(7200)
def test_debug_hold(bench):
    bench.dbs.reset("big1")
    bench.clear_backups()
    Path("/tmp/bench_debug.json").write_text(json.dumps({"inv": str(bench.project.inventory), "dir": str(bench.project.dir), "pw": bench.server.password, "port": bench.server.port, "sock": str(bench.server.socket_dir)}))
    while not Path("/tmp/bench_debug.stop").exists():
        if Path("/tmp/bench_debug.reset").exists():
            kind = Path("/tmp/bench_debug.reset").read_text().strip() or "big1"
            bench.dbs.reset(kind); bench.clear_backups()
            Path("/tmp/bench_debug.reset").unlink()
        time.sleep(0.2)
