"""Where TFDS 4.9.10 needs help to build our data sets; each fix applies only around the TFDS calls that need it.

`spill_without_tensorflow` lets a build write splits too large for memory without TensorFlow;
`quiet_custom_configs` hides the warning TFDS logs for every builder made per request. Neither is
installed at import, so importing vlm_jax changes nothing in TFDS. tests/data/test_tfds_compat.py
fails the day TFDS no longer needs either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import types

from tensorflow_datasets.core import shuffle


class _HideCustomConfigNotice(logging.Filter):
    """Every builder here is configured per request, so TFDS's notice about it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Using custom data configuration")


@contextlib.contextmanager
def quiet_custom_configs():
    """While making a builder: drop TFDS's "Using custom data configuration" warning."""
    notice = _HideCustomConfigNotice()
    logger = logging.getLogger("absl")
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


@contextlib.contextmanager
def spill_without_tensorflow():
    """While preparing a data set: let TFDS spill splits over 1 GB to local bucket files without TensorFlow.

    TFDS's writer shuffles in memory up to 1 GB, then spills to 1,000 bucket files opened through
    `tf.io.gfile`, which needs TensorFlow. Local files need only Python's own file calls; the soft limit
    on open files is raised for the 1,000 buckets and put back after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = shuffle.BUCKETS_NUMBER + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                    hard))
    gfile = types.SimpleNamespace(GFile=open, exists=os.path.exists, remove=os.remove)
    original = shuffle.tf
    shuffle.tf = types.SimpleNamespace(io=types.SimpleNamespace(gfile=gfile))
    try:
        yield
    finally:
        shuffle.tf = original
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
