"""The artifact contract: what training writes into the model folder and the service reads back.

Both halves import this package, and it imports nothing else from ``service`` or ``training`` (pyproject's
``[tool.importlinter]`` checks both directions in ``make lint``). Its third-party imports are torch and
numpy, plus Pillow for ``images``.

- ``manifest``: the manifest (task, labels, input spec, metrics, formats, checksums), read and written.
- ``formats``: each model format's loader and the checks that it can run here.
- ``loading``: verify, load and warm up a version (``load_model``); ``quiet_jit``, the one filter for
  torch.jit's deprecation warning.
- ``images``: how a decoded image becomes a model's input, as its input spec says.
- ``routing_state``, ``routing_store``: a model's rollout (default, canary, shadow) and its file beside
  the versions, which ``training --publish`` and the service's management API both change.
- ``allocator``: how glibc keeps the memory torch frees, for training's and the runtime's processes.
"""
