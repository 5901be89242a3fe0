"""The serving layer: everything that scores images with a trained model, on TensorFlow and
Keras only (never Beam, never ``pipeline``, ``trainer`` or ``webdemo``).

One concern per module:

* ``job``: load a trained job (its spec, ``schemas.job_spec``, and its model);
* ``heads``: how a saved model's heads give P(positive), and the layer Grad-CAM reads;
* ``preprocess``: THE model-input preparation (the one TF resize, the one round/clip/cast,
  the one projective transform), shared by tf.data training input, export and inference;
* ``predict``: compiled batch prediction in bounded memory, and the one batch-and-flush loop;
* ``gradcam``: Grad-CAM and mapping a map on the model's input back onto the source film;
* ``heatmap``: drawing overlays (colour map, captions, PNG with text chunks);
* ``export``: the SavedModel export with its serving signatures;
* ``startup``: quiet TensorFlow start-up for the entry points.

The Beam jobs wire it into RunInference (``pipeline.model_handler``); the trainer's CLIs
and the web demo call it directly.
"""
