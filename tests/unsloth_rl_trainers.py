"""Run a pipeline command under the preference trainers Unsloth generates on a GPU (`python tests/unsloth_rl_trainers.py
<compile dir> <pipeline.train arguments>`), in a process of its own: the patch is global.

On a CUDA machine `import unsloth` regenerates TRL's DPOTrainer, KTOTrainer and trl.experimental's ORPOTrainer and
CPOTrainer from rl.py (`patch_trl_rl_trainers`); on the CPU backend it does not. Here rl.py is imported with the
`unsloth.models` package stubbed (its __init__ needs triton), and its own functions generate the four classes and
put them in TRL's place, bf16 reported as supported, as on an A100 or H100."""

import importlib
import importlib.machinery
import os
import sys
import types

os.environ["UNSLOTH_COMPILE_LOCATION"] = sys.argv[1]  # the generated files go there, not into the working directory
import unsloth  # noqa: E402
import unsloth_zoo.device_type as device_type  # noqa: E402

device_type.device_is_bf16_supported = lambda *args, **kwargs: True
package = types.ModuleType("unsloth.models")
package.__path__ = [os.path.join(os.path.dirname(unsloth.__file__), "models")]
package.__spec__ = importlib.machinery.ModuleSpec("unsloth.models", None, is_package=True)
sys.modules["unsloth.models"] = package
utils = types.ModuleType("unsloth.models._utils")
utils._get_inference_mode_context_manager = lambda model: __import__("torch").inference_mode()
utils.UNSLOTH_ENABLE_LOGGING = False
utils.TorchAOConfig = type("TorchAOConfig", (), {})  # imported by loader_utils; unused by the trainers
sys.modules["unsloth.models._utils"] = package._utils = utils
rl = importlib.import_module("unsloth.models.rl")
experimental = rl._import_trl_experimental_trainers()
for name in ("dpo_trainer", "kto_trainer"):
    rl._patch_trl_rl_trainers_impl(name)
for name in ("orpo", "cpo"):
    rl._patch_trl_experimental_trainer(name, experimental[name])

if __name__ == "__main__":
    sys.argv = ["pipeline.train", *sys.argv[2:]]
    from pipeline.cli.train import cli

    cli()
