"""One converter module per model of the manifest, named after the model.

Each fulfils the contract described in :mod:`facecloak.core.zoo.registry`. Models that run as a graph listing
declare a :class:`~facecloak.core.zoo.graph.GraphModel`; the others write their architecture out in torch and
map the source file's weights into it.
"""
