"""Small synthetic stores for the data tests."""

import numpy as np

from data_pipelines.envs.base import ActionComponent, ActionSpec
from data_pipelines.episodes import EpisodeStore

SPEC = ActionSpec((ActionComponent("move", "discrete", 5),))
FRAME = (8, 8, 3)


def episode(e, length, rng=None):
  """An episode whose frames carry its id (pixel 0) and time step (pixel 1), so windows are checkable."""
  rng = rng or np.random.default_rng(e)
  frames = rng.integers(0, 256, (length,) + FRAME, dtype=np.uint8)
  frames[:, 0, 0, 0] = e
  frames[:, 0, 1, 0] = np.arange(length)
  return {
    "frames_THWC": frames,
    "actions_discrete_TA": rng.integers(0, 5, (length, 1)).astype(np.int32),
    "rewards_T": rng.random(length).astype(np.float32),
    "tasks_T": np.full((length,), e % 3, np.int32),
    "action_labelled_T": np.arange(length) > 0,
  }


def make_store(path, lengths):
  store = EpisodeStore.create(
    path, env="synthetic", frame_shape=FRAME, action_spec=SPEC, task_names=("a", "b", "c"), fps=10
  )
  episodes = [episode(e, n) for e, n in enumerate(lengths)]
  for ep in episodes:
    store.append(**ep)
  return store, episodes
