"""The embedded model: a small Fashion-MNIST DiT shipped in ``assets/``, its data and its trainer.

Start at :mod:`.model` (:func:`~.model.load_embedded`); :mod:`.data` reads Fashion-MNIST, :mod:`.train` trains.
"""
