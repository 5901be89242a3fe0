"""The single source of truth: CheXpert's CSV, label codes, policies and the record spec.

``schemas.chexpert`` is pure Python + numpy (the Beam side can import it without
TensorFlow); ``schemas.example`` holds the ``tf.train.Example`` spec for writer and reader;
``schemas.job_spec`` is what a trained model carries for any scorer (``job_spec.json``).
"""
