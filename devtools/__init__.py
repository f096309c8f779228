"""Development tools, not shipped: the embedded local AWS, the fleet simulator, the demo, test settings.

Run from the checkout with the ``dev`` extra installed (``python -m devtools --help``), like ``bench``.
The shipped packages (``worker``, ``processors``, ``schemas``) never import this one.
"""
