from ductwork.__about__ import __version__
