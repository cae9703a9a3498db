"""Classify images with a checkpoint or an exported model:
python predict.py --config_path CONFIG --checkpoint_path CKPT --image PATH [--top_k 5] [--result_file out.csv|json]
python predict.py --config_path CONFIG --model_file NAME.mindir|NAME.onnx --image PATH

PATH is an image file or a folder (searched recursively).  Images are prepared with the evaluation transform of the
config, settled by the checkpoint's model card (or the NAME.json export.py writes beside the exported file); class
names come from there too (ImageNet's for 1,000 classes where none are recorded).  Undecodable files are skipped with
a warning."""
import src  # noqa: F401  (first: sets OpenMP's wait policy before MindSpore loads OpenMP, see src/__init__.py)
import mindspore as ms  # noqa: E402  pylint: disable=wrong-import-order

from src.callbacks import TerminalProgress
from src.checkpoint import build_network
from src.dataset import pipeline_errors_reported
from src.errors import UserError
from src.model_card import EVALUATION_KEYS, apply_card, class_names
from src.model_utils.cli import log, run
from src.model_utils.config import get_config
from src.model_utils.device import setup_device
from src.predict import exported_card, exported_model, find_images, image_batches, top_classes, write_results


def main():
    config = get_config(description=__doc__)
    setup_device(config)
    if bool(config.checkpoint_path) == bool(config.model_file):
        raise UserError("give one of --checkpoint_path CKPT or --model_file NAME.mindir|NAME.onnx")
    if not config.image:
        raise UserError("image is empty; expected --image FILE_OR_FOLDER")
    if config.checkpoint_path:
        net, card = build_network(config, config.checkpoint_path, "checkpoint_path")
        net.set_train(False)
        model = lambda images: net(ms.Tensor(images)).asnumpy()  # noqa: E731
        source = config.checkpoint_path
    else:
        card = exported_card(config.model_file)
        apply_card(config, card, config.model_file, EVALUATION_KEYS)
        model = exported_model(config.model_file, card.get("input_shape", [1])[0])
        source = config.model_file
    names = class_names(card, config.class_num)
    files = find_images(config.image)
    batches = image_batches(config, files)
    progress = TerminalProgress(-(-len(files) // config.batch_size))
    results = []
    with pipeline_errors_reported():
        for batch in batches.create_dict_iterator(num_epochs=1, output_numpy=True):
            for index, top in zip(batch["index"], top_classes(model(batch["image"]), names, config.top_k)):
                results.append((files[index], top))
                log(f"{files[index]}: " + ", ".join(f"{name} {probability:.4f}" for _, name, probability in top))
            progress.advance(len(batch["index"]))
    log(f"predicted {len(results)} of {len(files)} images with {source}")
    if config.result_file:
        write_results(config.result_file, results)
    return 0


if __name__ == "__main__":
    run(main)
