"""Training tools over the zoo (``facecloak train-surrogate``): surrogates fine-tuned so attacks on them transfer.

Like the benchmarks, this package reads photos from an explicit data folder; the engine (:mod:`facecloak.core`)
never imports it.
"""
