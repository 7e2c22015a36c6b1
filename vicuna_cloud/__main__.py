from vicuna_cloud.cli import main

main()
