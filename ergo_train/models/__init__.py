"""Models: the tiny random Qwen2.5-VL builder, the torchvision-free processor, model/processor loaders."""
