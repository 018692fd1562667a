"""Scene data: the CLEVR-like renderer, dataset loaders and the inputs of whole-dataset passes.

    renderer        CLEVR-like scenes without Blender: the dataset writer and its public names
    placement       CLEVR's object placement rules, visibility rejection and relationships
    camera          CLEVR's camera: projection to pixels, rays and ground directions
    camera_check    how well the camera reproduces real CLEVR's `pixel_coords`
    raycast         analytic ray/solid intersection, bevelled normals, the z-buffer
    shading         lights, materials, ground, soft shadows and antialiasing
    datasets        CLEVR folders, image folders and `datasets` copies as training items
    inputs          one door to every input of `strop export` / `cache-features` (streams too)
    webdataset      WebDataset tar shards, read member by member, never unpacked
    workers         DataLoader workers that die with the process that started them

Import the module you need; this package imports nothing itself.
"""
