"""The reduced synthetic-world recipes the tests build (once per session, see ``conftest.py``)."""

#: The 8-concept world model in 60 training steps (~10 s of CPU). The demo's quick mode uses the same recipe, so
#: the session's demo run finds this model in the cache. Over build seeds 0-9: alignment mIoU 0.889-0.914.
FAST_WORLD_STEPS = dict(steps=60, pool_scenes=64, pool_size=160)

#: The 16-concept world model at the same reduced recipe: ~11 s of CPU (20-25 s wall on the shared 2-core
#: machine). Its image tokens align with all 16 names: alignment mIoU 0.836 on 24 held-out 256 px scenes, lowest
#: concept 0.74 (over build seeds 0-4: 0.80-0.84, lowest 0.64-0.74), enough for tests that adapt on some names and
#: test on others.
OPEN_WORLD_TEST_STEPS = dict(steps=60, pool_scenes=64, pool_size=160)
