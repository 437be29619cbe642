"""face-transfer: teacher ensemble -> fusion auto-encoder -> distilled student -> TFLite.

The library never reads absl flags; scripts in trainers/ and export/ do.
"""
__version__ = "0.1.0"
