"""Dataset builders; importing this package registers every one of them with TFDS."""
from cxr_jax.data.builders import phantom  # noqa: F401
from cxr_jax.data.builders import covid_qu_ex  # noqa: F401
from cxr_jax.data.builders import cxr_collection  # noqa: F401
from cxr_jax.data.builders import image_folder  # noqa: F401
from cxr_jax.data.builders import kermany_pneumonia  # noqa: F401
from cxr_jax.data.builders import covid19_radiography  # noqa: F401
from cxr_jax.data.builders import siim_covid19  # noqa: F401
from cxr_jax.data.builders import rsna_pneumonia  # noqa: F401
from cxr_jax.data.builders import nih_cxr14  # noqa: F401
from cxr_jax.data.builders import chexpert_cxr  # noqa: F401
from cxr_jax.data.builders import covidx  # noqa: F401
