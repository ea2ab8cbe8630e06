"""blurforge: synthesise paired blurry/sharp training data for deblurring into Parquet manifests.

Never imports torch: the package installs and runs light.
"""

__version__ = "0.1.0"
