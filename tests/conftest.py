import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# one thread per pytest worker (`-n 2` uses both cores); extra threads only spin when cores are shared
torch.set_num_threads(1)

from paths import DATA  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data folder missing at {DATA}")
    return DATA
