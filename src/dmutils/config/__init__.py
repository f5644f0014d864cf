"""Run parameters: the typed schema (:mod:`~dmutils.config.schema`) and its loader (:mod:`~dmutils.config.load`).

``from dmutils.config import load_params, Params`` is the usual entry point."""
from dmutils.config.load import deep_merge, explain, load_params, parse_overrides
from dmutils.config.schema import (
                                   TOY_CLASSES,
                                   AffinityParams,
                                   CaptureParams,
                                   ClassSpec,
                                   CRFParams,
                                   DatasetParams,
                                   MaskParams,
                                   ModelParams,
                                   NoiseLearningParams,
                                   OracleParams,
                                   Params,
                                   PromptParams,
                                   RayParams,
                                   RealDataParams,
                                   RunParams,
                                   SpliceParams,
                                   StudyParams,
                                   TrainParams,
)

__all__ = ['AffinityParams', 'CRFParams', 'CaptureParams', 'ClassSpec', 'DatasetParams', 'MaskParams', 'ModelParams', 'NoiseLearningParams', 'OracleParams', 'Params', 'PromptParams', 'RayParams', 'RealDataParams', 'RunParams', 'SpliceParams', 'StudyParams', 'TOY_CLASSES', 'TrainParams', 'deep_merge', 'explain', 'load_params', 'parse_overrides']
