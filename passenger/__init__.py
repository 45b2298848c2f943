"""passenger: an application server on Twisted that runs any web app in any language."""

__version__ = "0.1.0"
