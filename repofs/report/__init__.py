"""``repofs report --html FILE``: one self-contained HTML page about a repository.

``data`` gathers the figures (the same as ``stats --json``, plus generations, protection,
verification and the log of operations); ``svg`` draws the plots as inline SVG; ``page``
lays them out in one HTML document with its style and one small script inline. The page
loads nothing from the network and shows everything without its script (which only adds
the totals line computed from the embedded figures, and tooltips).
"""
