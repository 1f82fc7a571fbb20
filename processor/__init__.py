"""Runners: training (:mod:`processor.trainer`, ``train.py``) and evaluation (:mod:`processor.tester`,
``test.py``), with what they share: devices, distributed helpers, feature extraction and evaluation, results
records, the modal-bias report and the training state of ``last.pth``.

Import the module you need: ``test.py`` does not load the training stack (TensorBoard, DDP).
"""
