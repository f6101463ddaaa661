"""Infrastructure: files written atomically, the process group, optional packages, registries, seeds.

The ground floor: nothing here imports any other part of tokrl, and every other layer may import it.
"""
