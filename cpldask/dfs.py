"""python-cpl's :mod:`cpl.dfs`: the processing history in a product's header.

:class:`ProcessingInfo` is python-cpl's class (recipe, version, parameters,
calibration and raw frames with their MD5 sums, read from the ``ESO PRO REC``
keywords), except that :meth:`~ProcessingInfo.create_recipe` makes a
:class:`cpldask.Recipe`, which runs on Dask.

Examples
--------
>>> import cpldask as cpl
>>> info = cpl.dfs.ProcessingInfo('MASTER_BIAS.fits')
>>> info.name, info.param['combine']
('muse_bias', 'sigclip')
>>> muse_bias = info.create_recipe()       # configured as in that run
"""

from __future__ import annotations

import cpl.dfs

from .recipe import Recipe

__all__ = ["ProcessingInfo"]


class ProcessingInfo(cpl.dfs.ProcessingInfo):
    """The processing information of one recipe run in a product header; see
    python-cpl's :class:`cpl.dfs.ProcessingInfo`."""

    def create_recipe(self) -> Recipe:
        """A :class:`cpldask.Recipe` configured with this run's parameters,
        calibration frames and raw tag (the newest version on the path)."""
        recipe = Recipe(self.name)
        recipe.param = self.param
        recipe.calib = self.calib
        recipe.tag = self.tag
        return recipe

    @staticmethod
    def list(source) -> list["ProcessingInfo"]:
        """Every run recorded in the header, in execution order."""
        infos = []
        for recno in range(1, 2**16):
            try:
                infos.append(ProcessingInfo(source, recno))
            except KeyError:
                break
        return infos
