"""The shared kit under the jobs, the trainer and the web demo: nothing here imports
TensorFlow or Beam at import time (Beam's FileSystems only for a remote path).

Image decoding (`imaging`), view detection (`views`), study aggregation (`studies`), the
TF-free TFRecord framing (`tfrecord`), the one filesystem layer for job writes (`storage`),
snapshot commits with their lock (`commit`), the one CSV reader (`csv_reader`), change
detection (`fingerprint`), the command-line kit (`cli`), the one `ConfigError` every job
raises (`errors`) and listing the files a scoring command names (`inputs`).
"""
