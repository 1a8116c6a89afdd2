# Stand-ins for names nnunetv2 2.8.1 imports that Debian's torch 1.13 / Python lack: torch._dynamo, and the
# training-only packages blosc2 (preprocessed data), cc3d (connected components in training transforms) and sklearn
# (cross-validation splits). Importing nnUNetTrainer (inference looks the trainer class up) needs all of them.
import importlib.util
import sys
import types

if importlib.util.find_spec("torch") is not None and "torch._dynamo" not in sys.modules:
    _dynamo = types.ModuleType("torch._dynamo")

    class OptimizedModule:  # never an instance: nnU-Net only uses it in isinstance checks
        pass

    _dynamo.OptimizedModule = OptimizedModule
    sys.modules["torch._dynamo"] = _dynamo


class _Unavailable(type):
    """Any attribute is another placeholder class, so annotations like blosc2.ndarray.NDArray resolve;
    calling one (real use: training data or training transforms) fails."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__name__}: blosc2/cc3d/sklearn are not installed: only nnU-Net's training needs them")


class _UnavailableModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable(name, (), {})


for _name, _submodules in (("blosc2", ()), ("cc3d", ()), ("sklearn", ("model_selection",))):
    if importlib.util.find_spec(_name) is None:
        sys.modules[_name] = _UnavailableModule(_name)
        for _sub in _submodules:
            sys.modules[f"{_name}.{_sub}"] = _UnavailableModule(f"{_name}.{_sub}")
