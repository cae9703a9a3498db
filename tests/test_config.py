"""Config system: YAML -> typed CLI overrides -> validated Config."""
import glob
import os

import pytest
import yaml

from src.model_utils.config import ROOT_DIR, SCHEMA, ConfigError, get_config, load_yaml


def write_yaml(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_cli_override_takes_schema_type_not_yaml_type(tmp_path):
    path = write_yaml(tmp_path, "lr_init: 0\nbatch_size: 32\n")
    config = get_config(["--lr_init", "0.01", "--batch_size", "64"], config_path=path)
    assert config.lr_init == pytest.approx(0.01) and isinstance(config.lr_init, float)
    assert config.batch_size == 64 and isinstance(config.batch_size, int)
    assert config.cli_keys == {"lr_init", "batch_size"}


def test_yaml_int_for_float_key_becomes_float(tmp_path):
    config = get_config([], config_path=write_yaml(tmp_path, "lr_init: 0\n"))
    assert config.lr_init == 0.0 and isinstance(config.lr_init, float)


@pytest.mark.parametrize("text,expected", [("False", False), ("false", False), ("0", False),
                                           ("True", True), ("yes", True), ("1", True)])
def test_bool_parsing(text, expected):
    assert get_config(["--run_distribute", text]).run_distribute is expected


@pytest.mark.parametrize("text", ["[10, 20, 30]", "10,20,30", "10, 20 ,30"])
def test_list_parsing(text):
    assert get_config(["--lr_step_epochs", text]).lr_step_epochs == [10, 20, 30]


def test_equals_form():
    assert get_config(["--device_target=CPU", "--epoch_size=6"]).epoch_size == 6


def test_unknown_cli_key_names_it():
    with pytest.raises(ConfigError, match="unknown key 'lr_maxx'"):
        get_config(["--lr_maxx", "1"])


def test_unknown_yaml_key_names_it_and_file(tmp_path):
    path = write_yaml(tmp_path, "lr_max: 0.1\nbogus_key: 3\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: unknown key 'bogus_key'"):
        get_config([], config_path=path)


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "abc"], "key 'batch_size' expects int, got 'abc'"),
    (["--lr_max", "fast"], "key 'lr_max' expects float, got 'fast'"),
    (["--run_eval", "maybe"], "key 'run_eval' expects bool, got 'maybe'"),
    (["--lr_step_epochs", "[1, x]"], "key 'lr_step_epochs' expects list[int]"),
])
def test_wrong_type_cli(argv, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        get_config(argv)


def test_wrong_type_yaml(tmp_path):
    with pytest.raises(ConfigError, match="key 'epoch_size' expects int, got 'ten'"):
        get_config([], config_path=write_yaml(tmp_path, "epoch_size: ten\n"))
    with pytest.raises(ConfigError, match="key 'run_eval' expects bool, got 'yes please'"):
        get_config([], config_path=write_yaml(tmp_path, "run_eval: yes please\n"))


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "0"], "key 'batch_size' must be >= 1; got 0"),
    (["--lr_max", "-0.1"], "key 'lr_max' must be >= 0; got -0.1"),
    (["--width_mult", "0"], "key 'width_mult' must be > 0; got 0.0"),
    (["--epoch_size", "0"], "key 'epoch_size' must be >= 1; got 0"),
    (["--model", "resnet50"], "key 'model' must be one of mobilenet_v1, mobilenet_v3_small"),
    (["--model", "mobilenet_v3_large", "--width_mult", "0.5"], "key 'width_mult' must be one of 0.75, 1.0"),
    (["--padding", "valid"], "key 'padding' must be one of symmetric, same, same_depthwise; got 'valid'"),
    (["--head_width", "-1"], "key 'head_width' must be >= 0; got -1"),
    (["--epoch_size", "3", "--warmup_epochs", "5"], "warmup_epochs .5. is longer than training .epoch_size 3."),
    (["--decode_device", "Ascend", "--dataset", "imagenet2012"], "key 'decode_device' Ascend decodes ImageNet JPEGs "
     "on the Ascend device's DVPP and needs device_target Ascend and dataset imagenet2012; got device_target CPU, "
     "dataset imagenet2012"),
    (["--decode_device", "Ascend", "--device_target", "Ascend"], "needs device_target Ascend and dataset "
     "imagenet2012; got device_target Ascend, dataset cifar10"),
])
def test_out_of_range_values(argv, message):
    with pytest.raises(ConfigError, match=message):
        get_config(argv)


def test_missing_config_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        get_config(["--config_path", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="expected a mapping"):
        get_config([], config_path=write_yaml(tmp_path, "- 1\n- 2\n"))


def test_unsafe_yaml_tags_are_rejected(tmp_path):
    path = write_yaml(tmp_path, "file_name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        get_config([], config_path=path)


def test_saved_config_loads_back_identically(tmp_path):
    config = get_config(["--lr_max", "0.3", "--lr_step_epochs", "5,7", "--run_eval", "True"])
    out = str(tmp_path / "effective.yaml")
    config.save(out)
    again = get_config([], config_path=out)
    assert again.to_dict() == config.to_dict()
    assert "lr_max: 0.3" in str(config)


def test_attribute_set_is_checked():
    config = get_config([])
    config.batch_size = 8
    assert config.batch_size == 8
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'"):
        config.batchsize = 8
    with pytest.raises(ConfigError, match="key 'batch_size' must be >= 1"):
        config.batch_size = 0


REPO_YAMLS = sorted(glob.glob(os.path.join(ROOT_DIR, "*.yaml")) +
                    glob.glob(os.path.join(ROOT_DIR, "configs", "*.yaml")))


def test_expected_configs_exist():
    names = {os.path.basename(p) for p in REPO_YAMLS}
    assert {"default_config.yaml", "default_config_imagenet.yaml", "default_config_gpu_imagenet.yaml",
            "mobilenetv3_config.yaml", "demo_config.yaml"} <= names


@pytest.mark.parametrize("path", REPO_YAMLS, ids=os.path.basename)
def test_every_repository_yaml_validates(path):
    assert set(load_yaml(path)) <= set(SCHEMA)
    config = get_config([], config_path=path)
    with open(path, encoding="utf-8") as src:
        raw = yaml.safe_load(src)
    for key, value in raw.items():  # every value in the file made it through unchanged
        assert config.to_dict()[key] == (value if value is not None else "")


def test_recipes_match_the_seeds():
    cifar = get_config([], config_path=os.path.join(ROOT_DIR, "default_config.yaml"))
    assert (cifar.batch_size, cifar.epoch_size, cifar.lr_decay_mode, cifar.warmup_epochs, cifar.lr_max) == \
        (32, 90, "poly", 5, 0.1)
    for name in ("default_config_imagenet.yaml", "default_config_gpu_imagenet.yaml"):
        imagenet = get_config([], config_path=os.path.join(ROOT_DIR, name))
        assert (imagenet.class_num, imagenet.batch_size, imagenet.lr_decay_mode, imagenet.lr_max,
                imagenet.label_smooth_factor) == (1000, 256, "linear", 0.8, 0.1)
    v3 = get_config([], config_path=os.path.join(ROOT_DIR, "mobilenetv3_config.yaml"))
    assert (v3.model, v3.class_num, v3.optimizer, v3.lr_decay_mode, v3.warmup_epochs, v3.label_smooth_factor,
            v3.loss_scale, v3.epoch_size) == ("mobilenet_v3_small", 1000, "rmsprop", "cosine", 4, 0.1, 1024, 370)
