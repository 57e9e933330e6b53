"""pelagos.inverse — inverse methods for ANY pelagos Model (imports core only, never a concrete model).

- observations (re-exported from :mod:`pelagos.core`): :class:`ObservationSet`, operators, the long-format
  observation files (:func:`read_observations`) and synthetic observations for twins;
- variational: :func:`calibrate` (parameters, optional initial state), :func:`fourdvar` (strong/weak
  constraint), :func:`cycled_fourdvar`, :func:`var3d`, background covariances, L-BFGS/Adam/Gauss–Newton;
- ensembles: :func:`ensemble_filter` (EnKF perturbed obs / ETKF / LETKF, joint parameter estimation),
  :func:`esmda`;
- uncertainty: :func:`laplace_covariance` (Hessian, Gauss–Newton or Hessian-vector products + CG);
- scale-out: :func:`distributed_calibrate` (torch.distributed, torchrun).
See docs/inverse.md.
"""

from ..core.covariance import (
    CorrelatedCovariance,
    Covariance,
    DiagonalCovariance,
    MatrixCovariance,
    correlation_matrix,
)
from ..core.observations import ObservationSet
from ..core.obsio import Sampling, read_observations, synthetic_observations, write_observations
from ..core.operators import (
    IdentityOperator,
    IndexOperator,
    LinearOperator,
    StackedOperator,
    interpolate_profile,
)
from .calibrate import calibrate
from .distributed import distributed_calibrate
from .ensemble import (
    EnsembleResult,
    ESMDAResult,
    enkf_analysis,
    ensemble_filter,
    esmda,
    gaspari_cohn,
    letkf_analysis,
    localization_taper,
    sample_prior,
)
from .forward import predict, propagate
from .fourdvar import CycledResult, FourDVarResult, cycled_fourdvar, fourdvar, var3d
from .laplace import conjugate_gradient, hessian, hvp, laplace_covariance
from .optim import OptimizeResult, minimize
from .problem import VariationalProblem
from .result import CalibrationResult

__all__ = [
    "CalibrationResult",
    "CorrelatedCovariance",
    "Covariance",
    "CycledResult",
    "DiagonalCovariance",
    "ESMDAResult",
    "EnsembleResult",
    "FourDVarResult",
    "IdentityOperator",
    "IndexOperator",
    "LinearOperator",
    "MatrixCovariance",
    "ObservationSet",
    "OptimizeResult",
    "Sampling",
    "StackedOperator",
    "VariationalProblem",
    "calibrate",
    "conjugate_gradient",
    "correlation_matrix",
    "cycled_fourdvar",
    "distributed_calibrate",
    "enkf_analysis",
    "ensemble_filter",
    "esmda",
    "fourdvar",
    "gaspari_cohn",
    "hessian",
    "hvp",
    "interpolate_profile",
    "laplace_covariance",
    "letkf_analysis",
    "localization_taper",
    "minimize",
    "predict",
    "propagate",
    "read_observations",
    "sample_prior",
    "synthetic_observations",
    "var3d",
    "write_observations",
]
