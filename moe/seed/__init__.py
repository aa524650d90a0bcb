"""The seed layer: the seed's entry points and classes, kept with their names and keys.

``api`` (``train_and_save``, ``predict_from_model``), ``cli`` (``python main.py ...``),
``experts`` (``MoiraiMoEExpert``, ``TimeMoEExpert``, ``TimesFMExpert``: frozen
``nn.Module`` views of registry experts) and ``data`` (``load_jsonl``,
``TimeSeriesDataset``). Everything here is a thin shell over the production modules of
``moe``; nothing in production imports from here. Import the submodules directly.
"""
