from omni3_lora_merge.cli import main

main()
