"""Where clients run.

Packing (``plan``), in-process (``local``) and on Ray (``ray_executor``,
``supervisor``, ``connect``): the only modules that import Ray.
"""
