"""The gradient-inversion engine shared by the attacks (``fedsim.attacks``) and staleness repair
(``fedsim.repair``): gradients and unrolled local SGD at an explicit parameter vector
(``functional``), matching losses and priors (``objectives``), the optimiser (``optimise``), label
recovery from the last layer (``labels``), where the linear layers are (``layers``), and what an
inversion observes (``observation``)."""
